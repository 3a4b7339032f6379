"""Frozen-feature cache: the pooled KWS identity, cached vs uncached head training, frame-space crops, stale caches,
a killed cache pass, process-count independence and the command."""
import dataclasses
import functools
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import kdjax
from kdjax.data import pipeline
from kdjax.errors import ConfigError, DatasetError
from kdjax.finetune import cache, cached
from kdjax.finetune.cache import build, readers, store
from kdjax.finetune.model import KWSDownstream, SVDownstream
from kdjax.models import heads
from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import FeatureEncoder
from tests import hf_utils

BASE_CONV = dict(conv_dim=(32,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
KWS, SV = "synthetic_speech/kws_tiny", "synthetic_speech/sv_tiny"


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return str(hf_utils.save_tiny(tmp_path_factory.mktemp("enc") / "hf", "hubert_base_like", **BASE_CONV))


@pytest.fixture(scope="module")
def encoder(encoder_dir):
    return kdjax.from_pretrained(encoder_dir)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _kws_spec(encoder_dir, data_dir, split="train", **kw):
    return cache.CacheSpec(**{"encoder": encoder_dir, "dataset": KWS, "split": split, "kind": "pooled",
                              "max_samples": 16000, "data_dir": data_dir, **kw})


def _sv_spec(encoder_dir, data_dir, pad_to, split="train"):
    return cache.CacheSpec(encoder=encoder_dir, dataset=SV, split=split, kind="frames", max_samples=0, pad_to=pad_to,
                           data_dir=data_dir)


@pytest.fixture(scope="module")
def kws_cache(encoder_dir, encoder, cache_dir, tiny_data_dir):
    return cache.build_cache(_kws_spec(encoder_dir, tiny_data_dir), cache_dir, encoder, progress=False)


@nnx.jit
def _encode(encoder, x, mask):
    out = encoder(x, mask, output_hidden_states=True, deterministic=True)
    return jnp.stack(out.hidden_states), out.frame_mask


def _hidden(encoder, batch):
    """The uncached path: the frozen encoder on the pipeline's sample batch -> ([L, B, T, H], frame mask)."""
    return _encode(encoder, batch["input_values"], batch["attention_mask"])


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _step(graphdef, params, rest, opt_state, batch, loss_fn, lr):
    def f(p):
        m = nnx.merge(graphdef, p, rest, copy=True)  # copy: BatchNorm updates fresh Variables of this trace
        return loss_fn(m, batch)[0], nnx.split(m, nnx.Param, ...)[2]

    grads, rest = jax.grad(f, has_aux=True)(params)
    updates, opt_state = optax.adam(lr).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), rest, opt_state


def _train(model, batches, loss_fn, lr=1e-2):
    """Adam steps on the head params; returns the final state (params and BatchNorm statistics) as numpy."""
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = jax.jit(optax.adam(lr).init)(params)  # one compile, not one eager op per parameter
    for batch in batches:
        params, rest, opt_state = _step(graphdef, params, rest, opt_state, batch, loss_fn, lr)
    return jax.tree.map(np.asarray, {"params": params, "rest": rest})


def _kws_loss(m, b):
    return m.loss(b["hidden"], b["mask"], b["label"])


def _kws_pooled_loss(m, b):
    return cache.kws_pooled_loss(m, b["pooled"], b["label"])


def _sv_loss(m, b):  # cached batches: batch-major hidden states (heads.BatchMajor), uncached: layer-major
    return m.loss(b["hidden"], b["mask"], b["speaker"])


def _quick_init(ctor, seed=0):
    """A module with N(0, 0.2) parameters drawn by numpy and fresh BatchNorm statistics (mean 0, var 1): an eager
    nnx init compiles one op per parameter shape, seconds on a CPU."""
    graphdef, params, rest = nnx.split(nnx.eval_shape(ctor), nnx.Param, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0.0, 0.2, a.shape), a.dtype), params)
    rest = jax.tree_util.tree_map_with_path(
        lambda k, a: (jnp.ones if "'var'" in jax.tree_util.keystr(k) else jnp.zeros)(a.shape, a.dtype), rest)
    return nnx.merge(graphdef, params, rest)


def _assert_trees_close(a, b, tol):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------------ pooled identity
def test_pooled_kws_logits_and_gradients_equal_the_frame_path():
    layers, batch, frames, dim = 4, 5, 9, 16
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((layers, batch, frames, dim)), jnp.float32)
    mask = jnp.asarray(np.arange(frames)[None] < np.array([9, 1, 4, 7, 2])[:, None])
    hidden = jnp.where(mask[None, ..., None], hidden, 1e3)  # padding must not leak into either path
    labels = jnp.asarray([0, 3, 1, 2, 3])
    model = KWSDownstream(layers, dim, 4, hidden=8, rngs=nnx.Rngs(0))
    model.featurizer.weights[...] = jnp.asarray(rng.standard_normal(layers), jnp.float32)  # not the uniform start
    pooled = cache.pool_layers(jnp.moveaxis(hidden, 0, 1), mask)  # what the cache pass stores, [B, L, H]

    @nnx.jit
    def both(m):
        return (cache.kws_pooled_logits(m, pooled), m(hidden, mask),
                nnx.grad(lambda m: cache.kws_pooled_loss(m, pooled, labels)[0])(m),
                nnx.grad(lambda m: m.loss(hidden, mask, labels)[0])(m))

    logits_pooled, logits_frames, g_pooled, g_frames = both(model)
    np.testing.assert_allclose(logits_pooled, logits_frames, rtol=1e-5, atol=1e-5)
    _assert_trees_close(g_pooled, g_frames, 1e-5)
    assert float(jnp.abs(g_frames["featurizer"]["weights"][...]).max()) > 1e-4  # the layer weights do get gradient

    model.featurizer.layer_norm = True  # per-frame normalisation breaks the identity: refused
    with pytest.raises(ConfigError, match="layer_norm=False"):
        cache.kws_pooled_logits(model, pooled)


def test_kws_head_training_from_the_cache_equals_uncached(encoder, kws_cache, kws_test_cache, tiny_data_dir):
    features = store.CachedFeatures(kws_cache)
    source = pipeline.load_source(KWS, "train", tiny_data_dir)
    uncached_it = pipeline.train_iterator(source, batch_size=8, max_samples=16000, seed=3)
    cached_it = cache.kws_train_iterator(features, batch_size=8, seed=3)
    uncached, cached = [], []
    for _ in range(3):
        u, c = next(uncached_it), next(cached_it)
        np.testing.assert_array_equal(u["label"], c["label"])  # same rows in the same order
        hidden, mask = _hidden(encoder, u)
        uncached.append({"hidden": hidden, "mask": mask, "label": u["label"]})
        cached.append({"pooled": c["pooled"], "label": c["label"]})
    graphdef, init = nnx.split(KWSDownstream(features.num_layers, 32, 12, hidden=16, rngs=nnx.Rngs(1)))
    frames = _train(nnx.merge(graphdef, init), uncached, _kws_loss)
    pooled = _train(nnx.merge(graphdef, init), cached, _kws_pooled_loss)
    _assert_trees_close(pooled, frames, 1e-5)

    # The same test metrics: the trained head on the cached test split gives the uncached test logits.
    model = nnx.merge(graphdef, frames["params"])
    model.eval()
    test = kws_test_cache
    test_source = pipeline.load_source(KWS, "test", tiny_data_dir)
    for c, u in zip(cache.eval_batches(test, batch_size=8),
                    pipeline.eval_batches(test_source, batch_size=8, max_samples=16000, pad_to=16000)):
        np.testing.assert_array_equal(c["index"], u["index"])
        hidden, mask = _hidden(encoder, u)
        valid = u["valid"]
        np.testing.assert_allclose(np.asarray(cache.kws_pooled_logits(model, c["pooled"]))[valid],
                                   np.asarray(model(hidden, mask))[valid], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ SV frames
@pytest.fixture(scope="module")
def sv_cache(encoder_dir, encoder, cache_dir, tiny_data_dir):
    # Each utterance encoded padded to 2 s: for clips no longer than a 2 s crop, exactly what the uncached path encodes.
    spec = _sv_spec(encoder_dir, tiny_data_dir, pad_to=32000)
    return store.CachedFeatures(cache.build_cache(spec, cache_dir, encoder, progress=False))


@pytest.fixture(scope="module")
def kws_test_cache(encoder_dir, encoder, cache_dir, tiny_data_dir):
    return store.CachedFeatures(cache.build_cache(_kws_spec(encoder_dir, tiny_data_dir, "test"), cache_dir, encoder,
                                                  progress=False))


def test_sv_head_training_from_cached_frames_equals_uncached(encoder, sv_cache, tiny_data_dir):
    crop = 32000  # >= every sv_tiny utterance (1-2 s): the uncached crop is the whole utterance, padded to 2 s
    features = sv_cache
    source = pipeline.load_source(SV, "train", tiny_data_dir)
    uncached_it = pipeline.train_iterator(source, batch_size=4, max_samples=crop, seed=5)
    cached_it = cache.sv_train_iterator(features, batch_size=4, crop_samples=crop, seed=5)
    uncached, cached = [], []
    for _ in range(2):
        u, c = next(uncached_it), next(cached_it)
        hidden, mask = _hidden(encoder, u)
        np.testing.assert_array_equal(c["frame_mask"], mask)
        # group-norm encoder, exact: cached (float32) frames are the uncached frames (valid ones; padding is zeros)
        np.testing.assert_allclose(c["hidden_states"], np.where(mask[:, None, :, None], np.moveaxis(hidden, 0, 1), 0),
                                   rtol=1e-5, atol=1e-5)
        uncached.append({"hidden": hidden, "mask": mask, "speaker": u["speaker"]})
        cached.append({"hidden": heads.BatchMajor(jnp.asarray(c["hidden_states"])), "mask": c["frame_mask"],
                       "speaker": c["speaker"]})
    graphdef, init = nnx.split(_quick_init(lambda: SVDownstream(features.num_layers, 32, 6, width=32, embed_dim=16,
                                                                 rngs=nnx.Rngs(2))))
    make = lambda: nnx.merge(graphdef, init)  # noqa: E731  (_train does not mutate its inputs)
    frames = _train(make(), uncached, _sv_loss, lr=1e-3)
    from_cache = _train(make(), cached, _sv_loss, lr=1e-3)  # the featurizer weighs the cache's batch-major layout
    _assert_trees_close(from_cache, frames, 1e-5)


def test_sv_frames_held_in_memory_read_as_from_disk(sv_cache):
    on_disk = store.CachedFeatures(sv_cache.path)
    assert not on_disk.hold(max_bytes=0)  # over the cap: stays on disk
    held = store.CachedFeatures(sv_cache.path)
    assert held.hold()
    for i in (0, len(held) - 1):
        np.testing.assert_array_equal(held[i]["x"], on_disk[i]["x"])
        assert held[i]["x"].dtype == np.float32 and held[i]["speaker"] == on_disk[i]["speaker"]
    on_disk.hold = lambda max_bytes=0: False  # the reader asks again: keep this one on disk
    disk_it = cache.sv_train_iterator(on_disk, batch_size=4, crop_samples=16000, seed=2)
    held_it = cache.sv_train_iterator(held, batch_size=4, crop_samples=16000, seed=2)
    for _ in range(3):
        d, h = next(disk_it), next(held_it)
        assert d.keys() == h.keys()
        for k in d:
            np.testing.assert_array_equal(d[k], h[k])


def test_longest_frames_from_the_clip_lengths_match_the_records(sv_cache, encoder_dir, encoder, cache_dir,
                                                                tiny_data_dir):
    capped = dataclasses.replace(_sv_spec(encoder_dir, tiny_data_dir, pad_to=8000, split="test"), max_samples=20000)
    for features in (sv_cache, store.CachedFeatures(cache.build_cache(capped, cache_dir, encoder, progress=False))):
        lengths = [features.record(i)["x"].shape[1] for i in range(len(features))]
        assert readers.longest_frames(features) == max(lengths)
    assert max(lengths) == readers.num_frames(20000, features.frame_stride, features.receptive_field)
    # a run's test batches come in one shape, however long each batch's own utterances are (sv_cache: 1-2 s clips)
    caches = object.__new__(cached.FeatureCaches)
    caches.caches = {("sv", "test"): sv_cache}
    shapes = {b["hidden_states"].shape[2] for b in caches.test_batches("sv", batch_size=2)}
    assert shapes == {readers.longest_frames(sv_cache)}
    assert len({sv_cache.record(i)["x"].shape[1] for i in range(len(sv_cache))}) > 1


def test_half_precision_sv_frames_stay_in_the_storage_dtype_until_the_step(sv_cache, encoder_dir, encoder, cache_dir,
                                                                           tiny_data_dir):
    spec = dataclasses.replace(_sv_spec(encoder_dir, tiny_data_dir, pad_to=32000), dtype="float16")
    half = store.CachedFeatures(cache.build_cache(spec, cache_dir, encoder, progress=False))
    h = next(cache.sv_train_iterator(half, batch_size=4, crop_samples=16000, seed=2))
    f = next(cache.sv_train_iterator(sv_cache, batch_size=4, crop_samples=16000, seed=2))
    assert h["hidden_states"].dtype == np.float16 and f["hidden_states"].dtype == np.float32
    hidden, mask = cached.features(h)  # what the heads see: float32, batch-major
    assert hidden.array.dtype == np.float32 and hidden.array.shape == f["hidden_states"].shape
    np.testing.assert_allclose(hidden.array, f["hidden_states"], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(mask, f["frame_mask"])
    h, f = (next(cache.eval_batches(c, batch_size=4)) for c in (half, sv_cache))  # test / validation batches too
    assert h["hidden_states"].dtype == np.float16
    np.testing.assert_allclose(cached.features(h)[0].array, f["hidden_states"], rtol=1e-3, atol=1e-3)


def test_sv_frame_crops_correspond_to_the_uncached_sample_crops(sv_cache, tiny_data_dir):
    crop = 16000  # shorter than most utterances: real random crops
    features = sv_cache
    source = pipeline.load_source(SV, "train", tiny_data_dir)
    u = next(pipeline.train_iterator(source, batch_size=8, max_samples=crop, seed=7))
    c = next(cache.sv_train_iterator(features, batch_size=8, crop_samples=crop, seed=7))
    cropped = 0
    for r in range(8):
        ex = source[int(c["index"][r])]
        start = int(c["crop_start"][r])
        # the cached reader drew the very sample crop the uncached pipeline took for this row
        np.testing.assert_array_equal(u["input_values"][r], pipeline._example(ex, crop, start, True)["input_values"])
        record = features[int(c["index"][r])]["x"]
        first, length = cache.crop_frames(record.shape[1], start, 49, 320)
        np.testing.assert_array_equal(c["hidden_states"][r][:, :length], record[:, first:first + length])
        assert c["frame_mask"][r].sum() == length == min(49, record.shape[1])
        cropped += ex["audio"].shape[0] > crop
    assert cropped >= 2


def test_frame_crop_is_the_conv_features_of_the_sample_crop():
    config = EncoderConfig(feat_extract_norm="layer", conv_bias=True,  # per-frame norm: crops are exact
                           **{**BASE_CONV, "conv_dim": (8,) * 7})
    conv = nnx.jit(lambda m, x: m(x))
    model = _quick_init(lambda: FeatureEncoder(config, rngs=nnx.Rngs(0)))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 40000)), jnp.float32)
    full = np.asarray(conv(model, x))[0]
    crop = 16000
    n = readers.num_frames(crop, config.frame_stride, config.receptive_field)
    assert n == 49 and full.shape[0] == readers.num_frames(40000, 320, 400)
    for start in (0, 320 * 7, 320 * 50 + 100, 320 * 50 + 200):  # on the frame grid, and 100/200 samples off it
        first, length = cache.crop_frames(full.shape[0], start, n, config.frame_stride)
        assert length == n and first == round(start / 320)
        if start % 320 == 0:
            np.testing.assert_allclose(full[first:first + n], np.asarray(conv(model, x[:, start:start + crop]))[0],
                                       rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ refusal
def test_a_cache_of_another_encoder_or_dataset_version_is_refused(encoder_dir, kws_cache, cache_dir, tiny_data_dir,
                                                                  tmp_path):
    other = str(hf_utils.save_tiny(tmp_path / "other", "hubert_base_like", seed=1, **BASE_CONV))
    with pytest.raises(DatasetError, match=r"differs in encoder weights \(cache"):
        cache.open_cache(_kws_spec(other, tiny_data_dir), cache_dir)
    with pytest.raises(DatasetError, match=r"preprocessing max_samples \(cache 16000, run 8000\)"):
        cache.open_cache(_kws_spec(encoder_dir, tiny_data_dir, max_samples=8000), cache_dir)
    stale = str(tmp_path / "stale")
    shutil.copytree(kws_cache, stale)
    manifest = json.load(open(os.path.join(stale, "manifest.json")))
    manifest["fingerprint"]["dataset"]["version"] = "0.9.0"
    json.dump(manifest, open(os.path.join(stale, "manifest.json"), "w"))
    with pytest.raises(DatasetError, match=r"dataset version \(cache '0.9.0', run '2.1.0'\)"):
        cache.load(stale, _kws_spec(encoder_dir, tiny_data_dir))
    assert len(cache.load(kws_cache, _kws_spec(encoder_dir, tiny_data_dir))) == len(store.CachedFeatures(stale))


# ------------------------------------------------------------------------------------------------ atomic writes
# Killed at the last step before publication (every block and the manifest fsynced): the latest, so the strongest
# point; set kill_at = "record" to kill mid-block instead (same outcome, another ~10 s of CI).
@pytest.mark.parametrize("kill_at", ["rename"])
def test_killed_cache_pass_leaves_nothing_loadable(encoder_dir, kws_cache, tiny_data_dir, tmp_path, kill_at):
    cache_dir = str(tmp_path / "c")
    code = f"""
import os, signal
from kdjax.finetune import cache, cached
from kdjax.finetune.cache import build, store
if {kill_at!r} == "record":
    real, n = store.encode_record, [0]
    def encode_record(*a, **k):
        n[0] += 1
        if n[0] == 10:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    store.encode_record = encode_record
else:
    build.os.rename = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
spec = cache.CacheSpec(encoder={encoder_dir!r}, dataset={KWS!r}, split="train", kind="pooled", max_samples=16000,
                       data_dir={tiny_data_dir!r})
cache.build_cache(spec, {cache_dir!r}, progress=False)
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=180, env=env)
    assert out.returncode == -signal.SIGKILL, out.stderr.decode()[-2000:]
    spec = _kws_spec(encoder_dir, tiny_data_dir)
    leftovers = os.listdir(store.split_dir(cache_dir, KWS, "train"))
    assert leftovers and all(d.endswith(".incomplete") for d in leftovers)
    with pytest.raises(DatasetError, match="no complete feature cache"):
        cache.open_cache(spec, cache_dir)
    if kill_at == "rename":  # the next pass clears the leftover and publishes the same records
        rebuilt = store.CachedFeatures(cache.build_cache(spec, cache_dir, progress=False))
        reference = store.CachedFeatures(kws_cache)
        assert os.listdir(store.split_dir(cache_dir, KWS, "train")) == [os.path.basename(kws_cache)]
        for i in (0, len(reference) - 1):
            np.testing.assert_array_equal(rebuilt[i]["x"], reference[i]["x"])


# ------------------------------------------------------------------------------------------------ processes
def test_two_process_cache_and_readers_equal_one_process(encoder_dir, encoder, kws_cache, tiny_data_dir, tmp_path):
    spec = _kws_spec(encoder_dir, tiny_data_dir)  # the blocks batch other clips together: results do not change
    parts, _, source = build.resolve(spec, encoder)
    tmp, final = str(tmp_path / "two.incomplete"), str(tmp_path / "two")
    os.makedirs(tmp)
    for p in (1, 0):  # each "process" writes its own block
        build.write_block(spec, tmp, parts, encoder, source, process_index=p, process_count=2, progress=False)
    two, one = store.CachedFeatures(build.finalize(tmp, final, parts, encoder, 2)), store.CachedFeatures(kws_cache)
    assert two.fingerprint == one.fingerprint and two.utterance_ids() == one.utterance_ids()
    for i in range(len(one)):
        np.testing.assert_allclose(two[i]["x"], one[i]["x"], rtol=1e-6, atol=1e-6)
    whole = next(cache.kws_train_iterator(one, batch_size=8, seed=0))
    halves = [next(cache.kws_train_iterator(two, batch_size=4, seed=0, process_index=p, process_count=2))
              for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["index"] for h in halves]), whole["index"])


# ------------------------------------------------------------------------------------------------ the command
def test_cache_features_command_writes_half_precision_caches(encoder_dir, kws_test_cache, tiny_data_dir, tmp_path,
                                                             capsys):
    args = ["--encoder", encoder_dir, "--cache_dir", str(tmp_path), "--data_dir", tiny_data_dir, "--splits", "test",
            "--kws_dataset", KWS, "--no_progress"]
    assert cache.main(args + ["--dtype", "bfloat16", "--layers", "0,3"]) == 0
    spec = _kws_spec(encoder_dir, tiny_data_dir, "test", dtype="bfloat16", layers=(0, 3))
    half = cache.open_cache(spec, str(tmp_path))
    full = kws_test_cache
    assert half.num_layers == 2 and half[0]["x"].dtype == np.float32
    np.testing.assert_allclose(half[0]["x"], full[0]["x"][[0, 3]], rtol=1e-2, atol=1e-2)
    assert cache.main(args + ["--layers", "0,9"]) == 1
    assert "CacheSpec.layers=[0, 9]: expected indices in 0..3" in capsys.readouterr().err
