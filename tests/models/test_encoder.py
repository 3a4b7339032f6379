"""Encoder behaviour beyond parity: training mode, gradients, remat, scan, masking, sharding, config checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kdjax.errors import ConfigError
from kdjax.models import encoder as enc_lib
from kdjax.models.config import EncoderConfig, preset
from tests import hf_utils

jax.config.update("jax_default_matmul_precision", "highest")

TINY = EncoderConfig.from_hf({**hf_utils.TINY, "model_type": "hubert", "layerdrop": 0.2, "mask_time_prob": 0.3,
                              "mask_time_length": 2})


def _loss_and_grads(config, x, mask, rng):
    model = enc_lib.init_encoder(config, seed=0)

    def loss_fn(m):
        # LayerNorm outputs have nearly constant norms: weigh them by fixed random tensors so gradients are not noise
        out = m(x, mask, output_hidden_states=True, deterministic=False, rng=rng)
        weights = jax.random.normal(jax.random.key(7), out.last_hidden_state.shape)
        return sum(jnp.mean(h * weights) for h in out.hidden_states + (out.last_hidden_state,))

    return nnx.jit(nnx.value_and_grad(loss_fn))(model)


def test_training_mode_gives_finite_gradients_for_every_param():
    x, mask = hf_utils.batch()
    loss, grads = _loss_and_grads(TINY.replace(layerdrop=0.0), x, mask, jax.random.key(0))
    leaves = jax.tree.leaves(grads)
    assert np.isfinite(float(loss)) and leaves
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) > 0 for g in leaves) >= len(leaves) - 1  # masked_spec_embed may be unused


@pytest.mark.parametrize("switch", ["remat", "scan_layers"])
def test_remat_and_scan_change_nothing(switch):
    x, mask = hf_utils.batch()
    rng = jax.random.key(1)
    loss_a, grads_a = _loss_and_grads(TINY, x, mask, rng)
    loss_b, grads_b = _loss_and_grads(TINY.replace(**{switch: True}), x, mask, rng)
    np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-6)
    # Tolerance relative to each leaf's largest gradient: some (the key biases) are zero in exact arithmetic.
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, atol=1e-5 * max(np.abs(a).max(), 1e-3), rtol=0)


def test_layerdrop_skips_layers_only_in_training():
    model = enc_lib.init_encoder(TINY.replace(layerdrop=1.0))
    x, mask = hf_utils.batch()
    out = model(x, mask, output_hidden_states=True, deterministic=False, rng=jax.random.key(0))
    for h in out.hidden_states[1:]:
        np.testing.assert_array_equal(np.asarray(h), np.asarray(out.hidden_states[0]))
    out = model(x, mask, output_hidden_states=True)
    assert np.abs(np.asarray(out.hidden_states[-1]) - np.asarray(out.hidden_states[0])).max() > 1e-2


def test_dropout_and_masking_are_driven_by_the_key():
    model = enc_lib.init_encoder(TINY)
    x, mask = hf_utils.batch()
    run = lambda key: np.asarray(model(x, mask, deterministic=False, rng=key).last_hidden_state)  # noqa: E731
    np.testing.assert_array_equal(run(jax.random.key(5)), run(jax.random.key(5)))
    assert np.abs(run(jax.random.key(5)) - run(jax.random.key(6))).max() > 1e-3
    with pytest.raises(ConfigError, match="needs rng="):
        model(x, mask, deterministic=False)


def test_time_mask_spans_stay_inside_valid_frames():
    lengths = jnp.array([40, 25, 10])
    spans = np.asarray(enc_lib._span_mask(jax.random.key(0), lengths, 40, 0.5, 4, 2))
    for row, length in zip(spans, np.asarray(lengths)):
        assert not row[length:].any()
        assert row[:length].sum() >= 4  # at least one span of mask_length frames
    # on average about mask_prob of the frames are masked (overlaps make it an upper bound)
    many = enc_lib._span_mask(jax.random.key(1), jnp.full((256,), 200), 200, 0.3, 5, 0)
    assert 0.15 < float(jnp.mean(many)) <= 0.3


def test_num_layers_stops_early_and_matches_full_run():
    model = enc_lib.init_encoder(TINY)
    x, mask = hf_utils.batch()
    full = model(x, mask, output_hidden_states=True)
    part = model(x, mask, output_hidden_states=True, num_layers=2)
    assert len(part.hidden_states) == 3
    for a, b in zip(part.hidden_states, full.hidden_states):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_batch_equals_unsharded():
    devices = np.array(jax.devices()[:8])
    assert devices.size == 8, "tests/conftest.py forces 8 CPU devices"
    mesh = Mesh(devices, ("data",))
    model = enc_lib.init_encoder(TINY)
    graphdef, state = nnx.split(model)
    x, mask = hf_utils.batch(lengths=(4000, 2800, 3600, 3000, 4000, 1200, 2000, 3900))

    @jax.jit
    def forward(state, x, mask):
        return nnx.merge(graphdef, state)(x, mask).last_hidden_state

    expected = np.asarray(forward(state, x, mask))
    data = NamedSharding(mesh, P("data"))
    sharded_state = jax.device_put(state, NamedSharding(mesh, P()))
    out = forward(sharded_state, jax.device_put(x, data), jax.device_put(mask, data))
    assert out.sharding.spec == P("data") or len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params():
    model = enc_lib.init_encoder(TINY.replace(dtype="bfloat16"))
    x, mask = hf_utils.batch()
    out = model(x, mask)
    assert out.last_hidden_state.dtype == jnp.bfloat16
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
    ref = enc_lib.init_encoder(TINY)(x, mask).last_hidden_state
    valid = np.asarray(out.frame_mask)
    assert np.abs(np.asarray(out.last_hidden_state, np.float32) - np.asarray(ref))[valid].max() < 0.15


def test_posconv_einsum_gradient_equals_native_conv():
    model_a = enc_lib.init_encoder(TINY.replace(pos_conv_impl="conv"))
    model_b = enc_lib.init_encoder(TINY.replace(pos_conv_impl="einsum"))
    x = jax.random.normal(jax.random.key(0), (2, 20, 32))
    grad = lambda m: nnx.grad(lambda p, x: jnp.sum(jnp.sin(p(x))), argnums=(0, 1))(m, x)  # noqa: E731
    (ga, gxa), (gb, gxb) = grad(model_a.pos_conv), grad(model_b.pos_conv)
    for a, b in zip(jax.tree.leaves(ga) + [gxa], jax.tree.leaves(gb) + [gxb]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("field,value,expected", [
    ("feat_extract_norm", "batch", "'group' or 'layer'"),
    ("num_attention_heads", 5, "divisor of hidden_size=768"),
    ("conv_kernel", (10, 3), "equal length"),
    ("dtype", "int8", "'float32', 'bfloat16'"),
])
def test_bad_config_names_the_field(field, value, expected):
    with pytest.raises(ConfigError, match=rf"EncoderConfig\.{field}=.*{expected}"):
        EncoderConfig(**{field: value})


def test_presets_have_published_sizes():
    counts = {name: enc_lib.count_params(nnx.eval_shape(lambda: enc_lib.Encoder(preset(name), rngs=nnx.Rngs(0))))
              for name in ("facebook/hubert-base-ls960", "facebook/wav2vec2-base", "ntu-spml/distilhubert",
                           "facebook/wav2vec2-large-lv60")}
    assert abs(counts["facebook/hubert-base-ls960"] - 94.37e6) < 0.1e6, counts
    assert abs(counts["facebook/wav2vec2-base"] - 94.37e6) < 0.1e6, counts
    assert abs(counts["ntu-spml/distilhubert"] - 23.49e6) < 0.1e6, counts
    assert abs(counts["facebook/wav2vec2-large-lv60"] - 315.4e6) < 0.5e6, counts
    assert preset("facebook/wav2vec2-base").receptive_field == 400 and preset("ntu-spml/distilhubert").frame_stride == 320


def test_freeze_feature_encoder_zeroes_only_conv_gradients():
    """The frozen conv stack is an optimizer group (kdjax.train.optim): its gradient is zero, the layers' is not."""
    import ml_collections

    from kdjax.train import optim

    model = enc_lib.init_encoder(TINY.replace(layerdrop=0.0))
    x, mask = hf_utils.batch()
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p["encoder"])(x, mask).last_hidden_state[:, :3])  # noqa: E731
    cfg = ml_collections.ConfigDict(optim.default_config())
    cfg.groups = {"feature_encoder": {"frozen": True}}
    opt = optim.make_optimizer(cfg, 10, param_labels=optim.encoder_labels, labels=optim.ENCODER_GROUPS)
    grads = opt.prepare(jax.grad(loss)({"encoder": params}))["encoder"]
    conv = jax.tree.leaves(grads["feature_encoder"])
    rest = jax.tree.leaves(grads["layers"])
    assert conv and all(float(jnp.abs(g).max()) == 0.0 for g in conv)
    assert any(float(jnp.abs(g).max()) > 0.0 for g in rest)
