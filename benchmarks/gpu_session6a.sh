#!/usr/bin/env bash
# Session 6, first device call: `--select` overhead with streamed candidates (issue #16: selector shapes x CPU/NVDEC
# decoders) and TTFT with NVDEC against the stock pipeline on the 1-minute 720p clip (issue #17).
set -u
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
O=${OUT:-/tmp/out}; mkdir -p "$O"
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$O/$name.log" 2>&1; echo "== $name rc=$? $((SECONDS - t0)) s"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc; git log -1 --format=%h 2>/dev/null
step nvdec_diag 60 python3 benchmarks/diag_nvdec_context.py
step select 240 python3 benchmarks/bench_select.py --decoder cpu,gpu --selectors so400m-384,so400m-224,base-224 --repeat 3 --out "$O/select.json"
step e2e_720 200 python3 benchmarks/bench_e2e.py --decoder both --skip-sampling --repeat 3 --out "$O/e2e_720.json"
for f in "$O"/*.log; do echo "######## $f"; tail -n 60 "$f" | cut -c1-300; done
