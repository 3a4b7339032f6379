"""One DistilHuBERT step, kdjax vs PyTorch (transformers), same process: HuBERT-base teacher (random weights) forward
to layer 12, 2-layer 768-d student forward/backward, prediction heads for layers 4/8/12, L1 + cosine loss, AdamW.

Run: .venv/bin/python benchmarks/distill_step.py [--batch 4] [--seconds 2] [--repeats 5]
                                                  [--teacher_dtype bfloat16] [--feature_grad_mult 0.1] [--remat]
                                                  [--teacher wavlm]   # WavLM-base+ teacher, 2-layer WavLM student
                                                  [--feat_conv native|matmul]
     XLA_FLAGS=--xla_cpu_use_thunk_runtime=false .venv/bin/python benchmarks/distill_step.py   # XLA flag trials
Prints the median of `repeats` timed steps after warm-up for each side, audio-seconds per second, the ratio, and the
model FLOPs utilisation against this CPU's matmul peak (measured here with a large float32 jnp matmul). Model FLOPs
are XLA's cost analysis of the kdjax step (the same math as the PyTorch step).
"""
from __future__ import annotations

import argparse

import numpy as np

from common import distill_setup, median_time, torch_distill_step


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a float32 [n, n] @ [n, n] jnp matmul (median)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    t = median_time(lambda: f(a).block_until_ready(), repeats)
    return 2 * n ** 3 / t


def configs(args, teacher_dtype: str):
    """(teacher, student) EncoderConfigs of the benchmarked step: HuBERT-base -> 2-layer HuBERT, or WavLM-base+ ->
    2-layer WavLM."""
    from kdjax.distill.student import student_config
    from kdjax.models.config import preset

    wavlm = args.teacher == "wavlm"
    t_cfg = preset("microsoft/wavlm-base-plus" if wavlm else "facebook/hubert-base-ls960", dtype=teacher_dtype,
                   mask_time_prob=0.0)
    student = {"model_type": "wavlm", "feat_proj_layer_norm": True} if wavlm else {}
    return t_cfg, student_config(t_cfg, {"remat": args.remat, "init": "random", **student})


def kdjax_step(args, x: np.ndarray, mask: np.ndarray):
    """(step function, its compiled FLOPs) for the kdjax distillation step."""
    import jax

    from kdjax.distill.losses import LossConfig
    from kdjax.models import featconv

    featconv.IMPL = args.feat_conv
    t_cfg, s_cfg = configs(args, args.teacher_dtype)
    state, teacher, train_step = distill_setup(t_cfg, s_cfg, LossConfig(), args.feature_grad_mult)
    step = jax.jit(train_step)
    batch = {"input_values": jax.numpy.asarray(x), "attention_mask": jax.numpy.asarray(mask)}
    compiled = step.lower(state, batch, teacher).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    holder = {"state": state}

    def run():
        new_state, metrics = step(holder["state"], batch, teacher)
        jax.block_until_ready(metrics["loss"])
        holder["state"] = new_state  # no donation: the old state stays valid, as in the PyTorch loop

    return run, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--teacher_dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--feature_grad_mult", type=float, default=0.1)
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--feat_conv", default="native", choices=["native", "matmul"],
                        help="backward pass of the conv stack (kdjax.models.featconv.IMPL)")
    parser.add_argument("--skip_torch", action="store_true")
    parser.add_argument("--teacher", default="hubert", choices=["hubert", "wavlm"],
                        help="hubert: HuBERT-base teacher, HuBERT student; wavlm: WavLM-base+ teacher, WavLM student")
    args = parser.parse_args()

    import jax

    from kdjax.models import featconv

    featconv.IMPL = args.feat_conv
    samples = int(args.seconds * 16000)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, samples)).astype(np.float32)
    mask = np.ones((args.batch, samples), np.int32)
    audio = args.batch * args.seconds

    peak = matmul_peak()
    run_jax, flops = kdjax_step(args, x, mask)
    t_jax = median_time(run_jax, args.repeats)
    print(f"device: {jax.devices()[0].device_kind}, matmul peak {peak / 1e9:.0f} GFLOP/s (f32, jnp 2048^2)")
    print(f"kdjax   step: {t_jax:.3f} s  {audio / t_jax:6.2f} audio-s/s  "
          f"{flops / 1e9:.0f} GFLOP  MFU {flops / t_jax / peak:.1%}  ({args.teacher} teacher {args.teacher_dtype}, "
          f"feature_grad_mult {args.feature_grad_mult}, remat {args.remat}, feat_conv {args.feat_conv})")
    if args.skip_torch:
        return
    import torch

    t_cfg, s_cfg = configs(args, "float32")  # the same step in PyTorch (transformers), float32 weights
    run_torch = torch_distill_step(t_cfg, s_cfg, x, mask)
    t_torch = median_time(run_torch, args.repeats)
    print(f"PyTorch step: {t_torch:.3f} s  {audio / t_torch:6.2f} audio-s/s  MFU {flops / t_torch / peak:.1%}  "
          f"({torch.get_num_threads()} threads)")
    print(f"ratio kdjax / PyTorch step time: {t_jax / t_torch:.2f} (target <= 0.8)")


if __name__ == "__main__":
    main()
