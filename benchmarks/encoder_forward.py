"""kdjax vs transformers (PyTorch) encoder forward: HuBERT-base and WavLM-base+ shapes, random weights, batch 4 x 2 s.

Run: .venv/bin/python benchmarks/encoder_forward.py [--batch 4] [--seconds 2] [--repeats 5] [--dtype float32]
                                                    [--preset facebook/hubert-base-ls960 microsoft/wavlm-base-plus]
Both models hold the same weights; both run in this process; the median of `repeats` timed runs after warm-up is shown,
one row pair per preset.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from common import median_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--preset", nargs="+", default=["facebook/hubert-base-ls960", "microsoft/wavlm-base-plus"])
    args = parser.parse_args()
    for name in args.preset:
        run(args, name)


def _reference(config):
    """The transformers model of a kdjax config, random weights (HubertModel / Wav2Vec2Model / WavLMModel)."""
    from tests import hf_utils
    from tests.models import wavlm_utils

    fields = config.to_hf()
    if config.model_type == "wavlm":
        return wavlm_utils.wavlm_model(wavlm_utils.wavlm_config(
            **{k: v for k, v in fields.items() if k not in ("model_type", "architectures")}))
    return hf_utils.hf_model(hf_utils.hf_config(**fields))


def run(args, name: str) -> None:
    """Time one preset on both sides and print its rows."""
    import jax
    import torch
    from flax import nnx

    from kdjax.models import hf
    from kdjax.models.config import preset
    from kdjax.models.encoder import Encoder

    config = preset(name, dtype=args.dtype)
    reference = _reference(config)
    model = Encoder(config, rngs=nnx.Rngs(0))
    hf.load_weights(model, {k: v.numpy() for k, v in reference.state_dict().items()})
    samples = int(16000 * args.seconds)
    x = np.random.default_rng(0).standard_normal((args.batch, samples)).astype(np.float32)

    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x).last_hidden_state)
    x_jax = jax.device_put(x)
    t_jax = median_time(lambda: forward(state, x_jax).block_until_ready(), args.repeats)

    x_torch = torch.from_numpy(x)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def torch_forward():
        with torch.no_grad(), autocast:
            reference(x_torch)

    t_torch = median_time(torch_forward, args.repeats)
    audio = args.batch * args.seconds
    print(f"encoder forward, {name}, batch {args.batch} x {args.seconds:g} s, {args.dtype}, "
          f"median of {args.repeats} ({os.cpu_count()} CPUs, jax {jax.__version__} on {jax.default_backend()}, "
          f"torch {torch.__version__})")
    print(f"  kdjax (XLA)        {t_jax:7.3f} s   {audio / t_jax:7.1f} audio-s/s")
    print(f"  transformers (PT)  {t_torch:7.3f} s   {audio / t_torch:7.1f} audio-s/s")
    print(f"  ratio kdjax/PyTorch time: {t_jax / t_torch:.2f}  (< 1 means kdjax is faster)")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    main()
