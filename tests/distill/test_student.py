"""Student configs (paper parameter counts), initialisation from the teacher, and config errors."""
import jax
import numpy as np
import pytest
from flax import nnx

from kdjax.distill.losses import LossConfig, make_heads
from kdjax.distill.student import build_student, copy_from_teacher, student_config, student_settings
from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig, preset
from kdjax.models.encoder import Encoder

TINY = EncoderConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                     conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
                     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def _count(config: EncoderConfig) -> int:
    model = nnx.eval_shape(lambda: Encoder(config, rngs=nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("teacher", ["facebook/hubert-base-ls960", "facebook/wav2vec2-base"])
def test_paper_student_parameter_count(teacher):
    t = preset(teacher)
    s = student_config(t)
    n_student, n_teacher = _count(s), _count(t)
    assert abs(n_student - 23.5e6) <= 0.1e6, n_student
    assert 1 - n_student / n_teacher >= 0.75, (n_student, n_teacher)
    heads = nnx.eval_shape(lambda: make_heads(LossConfig(), s, t, rngs=nnx.Rngs(0)))
    assert sum(x.size for x in jax.tree.leaves(nnx.state(heads, nnx.Param))) == 768 * 2304 + 2304 + 3 * (768 * 768 + 768)


def test_default_student_is_the_published_distilhubert():
    assert student_config(preset("facebook/hubert-base-ls960")) == preset("ntu-spml/distilhubert")
    # A wav2vec2 teacher gives the same (HuBERT-typed, no projection LayerNorm) student.
    assert student_config(preset("facebook/wav2vec2-base")) == preset("ntu-spml/distilhubert")


def test_init_from_teacher_copies_exactly_the_right_tensors():
    teacher = Encoder(TINY.replace(feat_proj_layer_norm=True), rngs=nnx.Rngs(1))
    s_cfg = student_config(teacher.config, {"num_hidden_layers": 2})
    random = Encoder(s_cfg, rngs=nnx.Rngs(7))
    student = build_student(s_cfg, teacher, "teacher", nnx.Rngs(7))
    t = {".".join(map(str, p)): np.asarray(v) for p, v in nnx.to_flat_state(nnx.state(teacher, nnx.Param))}
    r = {".".join(map(str, p)): np.asarray(v) for p, v in nnx.to_flat_state(nnx.state(random, nnx.Param))}
    s = {".".join(map(str, p)): np.asarray(v) for p, v in nnx.to_flat_state(nnx.state(student, nnx.Param))}
    assert "feature_projection.norm.scale" not in s  # DistilHuBERT: no projection LayerNorm
    copied = {k for k in s if k.startswith(("feature_encoder.", "feature_projection.dense.", "pos_conv.",
                                             "layers.0.", "layers.1."))}
    assert copied and "layers.1.feed_forward.output.kernel" in copied
    for k in s:
        expected = t[k] if k in copied else r[k]
        np.testing.assert_array_equal(s[k], expected, err_msg=k)
    assert {k for k in s if k not in copied} == {"encoder_norm.scale", "encoder_norm.bias"}
    # The teacher's deeper layers are not in the student at all.
    assert not any(k.startswith("layers.2.") for k in s)


def test_random_init_differs_from_teacher():
    teacher = Encoder(TINY, rngs=nnx.Rngs(1))
    s_cfg = student_config(TINY, {"num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 32,
                                  "init": "random"})
    student = build_student(s_cfg, teacher, "random", nnx.Rngs(3))
    assert student.config.hidden_size == 16 and student.config.conv_dim == TINY.conv_dim


@pytest.mark.parametrize("settings, field", [
    ({"hidden_sise": 16}, "hidden_sise"),
    ({"hidden_size": 16}, "config.distill.student.hidden_size"),  # init='teacher' but shapes differ
    ({"intermediate_size": 48}, "config.distill.student.intermediate_size"),
    ({"num_hidden_layers": 5}, "config.distill.student.num_hidden_layers"),  # deeper than the teacher
    ({"hidden_size": 30, "init": "random"}, "num_attention_heads"),  # width the heads cannot split
    ({"hidden_size": 32, "num_attention_heads": 5, "init": "random"}, "config.distill.student.num_attention_heads"),
    ({"conv_stride": (4, 2, 2), "init": "random"}, "conv_kernel/conv_stride"),
    ({"init": "copy"}, "config.distill.student.init"),
    ({"model_type": "wav2vec2"}, "config.distill.student.feat_proj_layer_norm"),
])
def test_bad_student_settings_name_the_field(settings, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.").replace("/", "/")):
        student_config(TINY, settings)


@pytest.mark.parametrize("loss, field", [
    ({"target_layers": (2, 5)}, "config.distill.loss.target_layers has 5"),
    ({"mode": "hint", "student_layers": (1, 3), "target_layers": (2, 4)}, "config.distill.loss.student_layers has 3"),
    ({"mode": "hint", "student_layers": (1,), "target_layers": (2, 4)}, "config.distill.loss.student_layers"),
    ({"mode": "mse"}, "config.distill.loss.mode"),
    ({"layer_reduction": "max"}, "config.distill.loss.layer_reduction"),
    ({"cos_weigth": 1.0}, "cos_weigth"),
])
def test_bad_loss_settings_name_the_field(loss, field):
    s = student_config(TINY, {"num_hidden_layers": 2})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        LossConfig.from_fields(loss).validate(s, TINY)


def test_copy_refuses_mismatched_shapes():
    teacher = Encoder(TINY, rngs=nnx.Rngs(1))
    student = Encoder(TINY.replace(num_hidden_layers=1, intermediate_size=48), rngs=nnx.Rngs(2))
    with pytest.raises(ConfigError, match="intermediate_size"):
        copy_from_teacher(student, teacher)
    assert student_settings(None)["num_hidden_layers"] == 2


@pytest.mark.parametrize("name, teacher", [("distill_hubert_base", "facebook/hubert-base-ls960"),
                                           ("distill_wav2vec2_base", "facebook/wav2vec2-base")])
def test_paper_config_files_give_the_paper_student(name, teacher):
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(None)
    assert config.distill.teacher == teacher and list(config.distill.loss.target_layers) == [4, 8, 12]
    t = preset(teacher)
    s = student_config(t, dict(config.distill.student))
    LossConfig.from_fields(dict(config.distill.loss)).validate(s, t)
    assert abs(_count(s) - 23.5e6) <= 0.1e6 and 1 - _count(s) / _count(t) >= 0.75
    assert student_config(t, dict(module.get_config("student=4L").distill.student)).num_hidden_layers == 4
