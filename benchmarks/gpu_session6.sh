#!/usr/bin/env bash
# Session 6, one device call under a 560 s deadline, most important first: `--select` overhead with streamed and
# cached candidates (issue #16), NVDEC vs CPU TTFT against stock on the 1-minute 720p clip (issue #17), NVDEC
# sampling on the test clips, then the 1080p TTFT. Each step gets what is left of the deadline at most.
set -u
DEADLINE=${DEADLINE:-560}
source "$(dirname "$0")/_device.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
step select 170 python3 benchmarks/bench_select.py --decoder cpu,gpu --selectors ${SELECTORS:-so400m-384,so400m-224,base-224} --repeat 2 --out "$O/select.json"
step e2e_720 170 python3 benchmarks/bench_e2e.py --decoder both --skip-sampling --repeat 3 --prune-repeat 10 --out "$O/e2e_720.json"
step gpu_decode 120 python3 benchmarks/bench_gpu_decode.py --quick --repeat 3 --out "$O/gpu_decode.json"
step e2e_1080 150 python3 benchmarks/bench_e2e.py --decoder both --skip-sampling --repeat 2 --ratios 1.0,0.1 --decode-tokens 16 --prune-repeat 5 --clip 60:1920x1080 --out "$O/e2e_1080.json"
for f in "$O"/*.log; do echo "######## $f"; tail -n 50 "$f" | cut -c1-260; done
