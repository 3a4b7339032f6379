#!/usr/bin/env bash
# Per-host entry point that every launcher calls: sets up the environment and runs `python -m kdjax.main`.
#
# Usage:
#   launch/run.sh [--dry-run] [--local-processes N] [--devices-per-process D] -- --config=CFG --workdir=DIR [...]
#
# Multi-host (TPU VM workers, SLURM tasks): run once per host. KDJAX_DISTRIBUTED=1 makes kdjax call
# jax.distributed.initialize(); the coordinator, process count and id come from the cluster (TPU metadata, SLURM)
# or from KDJAX_COORDINATOR_ADDRESS / KDJAX_NUM_PROCESSES / KDJAX_PROCESS_ID when set.
# --local-processes N starts N processes on this machine (127.0.0.1, CPU collectives) to rehearse a multi-host run;
# all of them are stopped if one fails or the script is interrupted.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
python="${KDJAX_PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python="python3"; fi
fi
dry_run=0
local_processes=0
devices_per_process=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --local-processes) local_processes="$2"; shift 2 ;;
    --devices-per-process) devices_per_process="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "run.sh: missing kdjax arguments (e.g. -- --config=configs/distill_tiny.py --workdir=runs/x)" >&2
  exit 2
fi

export KDJAX_DISTRIBUTED=1
export PYTHONUNBUFFERED=1
cmd=("$python" -m kdjax.main "$@")

if [[ "$local_processes" -le 0 ]]; then
  if [[ "$dry_run" -eq 1 ]]; then echo "KDJAX_DISTRIBUTED=1 ${cmd[*]}"; exit 0; fi
  cd "$root"
  exec "${cmd[@]}"
fi

port="${KDJAX_PORT:-$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
xla_flags="${XLA_FLAGS:-}"
if [[ -n "$devices_per_process" ]]; then  # replaces any device count inherited from the environment
  xla_flags="$(echo "$xla_flags" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g')"
  xla_flags="$xla_flags --xla_force_host_platform_device_count=$devices_per_process"
fi
xla_flags="$(echo "$xla_flags" | xargs)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
for ((i = 0; i < local_processes; i++)); do
  env_line="KDJAX_COORDINATOR_ADDRESS=127.0.0.1:$port KDJAX_NUM_PROCESSES=$local_processes KDJAX_PROCESS_ID=$i"
  if [[ "$dry_run" -eq 1 ]]; then
    echo "JAX_PLATFORMS=cpu XLA_FLAGS='$xla_flags' $env_line KDJAX_DISTRIBUTED=1 ${cmd[*]}"
    continue
  fi
  (cd "$root" && JAX_PLATFORMS=cpu XLA_FLAGS="$xla_flags" KDJAX_COORDINATOR_ADDRESS="127.0.0.1:$port" \
    KDJAX_NUM_PROCESSES="$local_processes" KDJAX_PROCESS_ID="$i" exec "${cmd[@]}") &
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do
  if ! wait "$pid"; then status=1; cleanup; fi
done
exit "$status"
