#!/usr/bin/env bash
# One device call that runs this session's GPU measurements, each under its own time limit, logs under $OUT.
set -u
source "$(dirname "$0")/_device.sh"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
step batched_decode 100 python3 benchmarks/bench_batched_decode.py --device cuda --repeat 2 --tokens 64 --out "$O/batched_decode.json"
step prune_flashvid 70 python3 benchmarks/bench_prune_flashvid.py --device cuda --repeat 20 --warmup 5 --scenarios scenes --json "$O/prune_flashvid.json"
step gpu_decode 80 python3 benchmarks/bench_gpu_decode.py --quick --repeat 3 --out "$O/gpu_decode.json"
step e2e_nvdec 70 python3 benchmarks/bench_e2e.py --decoder both --skip-sampling --ratios 1.0,0.1 --repeat 2 --out "$O/e2e_nvdec.json"
step serve 130 python3 benchmarks/bench_serve.py --device cuda --model 7b-shaped --repeat 3 --rounds 2 --parts client,concurrency --out "$O/serve.json"
step flashvid_stage 80 python3 benchmarks/bench_flashvid_stage.py --ratios 0.1 --repeat 2 --out "$O/flashvid_stage.json"
