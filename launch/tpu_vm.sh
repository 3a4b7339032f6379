#!/usr/bin/env bash
# Cloud TPU VMs: create a VM (plain or queued resource), copy the code, install kdjax[tpu] on every worker, run a
# config on all workers at once, stream logs, delete the VM.
#
# Usage:
#   launch/tpu_vm.sh [--dry-run] create  NAME --zone Z --type v5litepod-16 [--version tpu-ubuntu2204-base] [--queued]
#   launch/tpu_vm.sh [--dry-run] copy    NAME --zone Z             # committed code -> ~/kdjax on all workers
#   launch/tpu_vm.sh [--dry-run] install NAME --zone Z             # pip install -e '.[tpu]' on all workers
#   launch/tpu_vm.sh [--dry-run] run     NAME --zone Z -- --config=configs/distill_hubert_base.py --workdir=gs://B/run
#   launch/tpu_vm.sh [--dry-run] logs    NAME --zone Z             # follow worker 0's log of the last run
#   launch/tpu_vm.sh [--dry-run] delete  NAME --zone Z [--queued]
#
# `run` starts launch/run.sh on every worker (--worker=all) in the background with its output in ~/kdjax-run.log;
# JAX finds the coordinator and process ids from the TPU metadata. Use a gs:// workdir (or a shared disk) so that every
# worker's checkpoint shards land in one place. --dry-run prints the gcloud commands without running them.
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
action="${1:-}"; name="${2:-}"
if [[ -z "$action" || -z "$name" || "$action" == -* ]]; then sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 2; fi
shift 2
zone=""; accel_type=""; version="tpu-ubuntu2204-base"; queued=0; project_flag=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --zone) zone="$2"; shift 2 ;;
    --type) accel_type="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --queued) queued=1; shift ;;
    --project) project_flag=(--project="$2"); shift 2 ;;
    --) shift; break ;;
    *) echo "tpu_vm.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -n "$zone" ]] || { echo "tpu_vm.sh: --zone is required" >&2; exit 2; }

run() {
  if [[ "$dry_run" -eq 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
ssh_all() { run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" "${project_flag[@]}" --worker=all --command="$1"; }

case "$action" in
  create)
    [[ -n "$accel_type" ]] || { echo "tpu_vm.sh create: --type is required (e.g. v5litepod-16)" >&2; exit 2; }
    if [[ "$queued" -eq 1 ]]; then
      run gcloud compute tpus queued-resources create "$name" --zone="$zone" "${project_flag[@]}" \
        --node-id="$name" --accelerator-type="$accel_type" --runtime-version="$version"
    else
      run gcloud compute tpus tpu-vm create "$name" --zone="$zone" "${project_flag[@]}" \
        --accelerator-type="$accel_type" --version="$version"
    fi ;;
  copy)
    # The committed tree (git archive), not the working folder: no virtualenv or run outputs travel.
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    tarball="${TMPDIR:-/tmp}/kdjax-src.tar.gz"
    run git -C "$root" archive --format=tar.gz -o "$tarball" HEAD
    run gcloud compute tpus tpu-vm scp "$tarball" "$name:~/kdjax-src.tar.gz" --zone="$zone" "${project_flag[@]}" \
      --worker=all
    ssh_all "mkdir -p ~/kdjax && tar -xzf ~/kdjax-src.tar.gz -C ~/kdjax" ;;
  install)
    ssh_all "cd ~/kdjax && python3 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e '.[tpu]'" ;;
  run)
    [[ $# -gt 0 ]] || { echo "tpu_vm.sh run: missing kdjax arguments (-- --config=... --workdir=...)" >&2; exit 2; }
    args="$(printf '%q ' "$@")"
    ssh_all "cd ~/kdjax && nohup launch/run.sh -- $args > ~/kdjax-run.log 2>&1 &" ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" "${project_flag[@]}" --worker=0 \
      --command="tail -n 200 -f ~/kdjax-run.log" ;;
  delete)
    if [[ "$queued" -eq 1 ]]; then
      run gcloud compute tpus queued-resources delete "$name" --zone="$zone" "${project_flag[@]}" --force --quiet
    else
      run gcloud compute tpus tpu-vm delete "$name" --zone="$zone" "${project_flag[@]}" --quiet
    fi ;;
  *) echo "tpu_vm.sh: unknown action '$action' (create, copy, install, run, logs, delete)" >&2; exit 2 ;;
esac
