#!/usr/bin/env bash
# One node, N GPUs, one process: JAX drives all local GPUs from a single controller (no jax.distributed needed).
#
# Usage:
#   launch/multigpu.sh [--gpus N] [--dry-run] -- --config=configs/distill_hubert_base.py --workdir=runs/distill
#
# --gpus N limits the run to the first N GPUs (CUDA_VISIBLE_DEVICES=0..N-1); default: all visible GPUs.
# Install first: pip install -e '.[cuda]'. The global batch in the config is split over the GPUs on the `data` axis.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
gpus=""
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus) gpus="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,8p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) break ;;
  esac
done
[[ $# -gt 0 ]] || { echo "multigpu.sh: missing kdjax arguments (-- --config=... --workdir=...)" >&2; exit 2; }

env_prefix=(env KDJAX_DISTRIBUTED=0 XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}")
if [[ -n "$gpus" ]]; then
  env_prefix+=(CUDA_VISIBLE_DEVICES="$(seq -s, 0 $((gpus - 1)))")
fi
python="${KDJAX_PYTHON:-python3}"
cmd=("${env_prefix[@]}" "$python" -m kdjax.main "$@")
if [[ "$dry_run" -eq 1 ]]; then echo "${cmd[*]}"; exit 0; fi
cd "$here/.."
exec "${cmd[@]}"
