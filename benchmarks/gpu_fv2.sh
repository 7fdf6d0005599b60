#!/usr/bin/env bash
# Branch fv2 (FlashVID's serial index_put_ runs removed): the FlashVID benchmark (scenes, 32x196 and 60x264, graph,
# eager and per-phase) and the GPU equivalence test, in one device call of about a minute; logs and JSON under $OUT.
set -u
source "$(dirname "$0")/_device.sh"
nvidia-smi --query-gpu=name --format=csv,noheader
step prune_flashvid 32 python3 benchmarks/bench_prune_flashvid.py --device cuda --repeat 20 --warmup 5 \
  --scenarios scenes --json "$O/prune_flashvid.json"
step equivalence 24 env FASTVID_TEST_DEVICE=cuda python3 benchmarks/flashvid_equivalence_gpu.py
