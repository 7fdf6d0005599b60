#!/usr/bin/env bash
# Session 6, second device call (issue #17): NVDEC sampling vs CPU on every test clip (bench_gpu_decode, with the
# 1080p and 10-minute clips and the codec checks), and TTFT with NVDEC vs stock on a 1080p and a 10-minute clip.
set -u
source "$(dirname "$0")/_device.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
step gpu_decode 220 python3 benchmarks/bench_gpu_decode.py --repeat 3 --out "$O/gpu_decode.json"
step e2e_1080 140 python3 benchmarks/bench_e2e.py --decoder both --skip-sampling --repeat 3 --ratios 1.0,0.1 --decode-tokens 16 --prune-repeat 5 --clip 60:1920x1080 --out "$O/e2e_1080.json"
step e2e_600 200 python3 benchmarks/bench_e2e.py --decoder both --skip-sampling --repeat 2 --ratios 1.0,0.1 --decode-tokens 16 --prune-repeat 5 --clip 600:1280x720 --out "$O/e2e_600.json"
for f in "$O"/*.log; do echo "######## $f"; tail -n 45 "$f" | cut -c1-300; done
