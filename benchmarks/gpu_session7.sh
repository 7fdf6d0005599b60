#!/usr/bin/env bash
# Session 7, one device call under a deadline (default 540 s), most important first: the CUDA-only tests of the
# graphed selector tower and the GPU decoder; `--select` overhead with the graphed selector embedding CPU-decoded
# candidates while they decode, and with a cached choice decoded by the engine's pipelined sampler (issue #16);
# CPU sampling of an H.264 clip with B-frames, skipping the non-reference frames or not; NVDEC vs CPU on every
# test clip with the codec checks and the 1/2/4/8-session sweep; TTFT on a 10-minute clip (issue #17).
set -u
DEADLINE=${DEADLINE:-540}
source "$(dirname "$0")/_device.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
step tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_siglip_scorer.py tests/test_frame_choice.py tests/test_video_gpu.py
step select 170 python3 benchmarks/bench_select.py --decoder cpu --selectors ${SELECTORS:-so400m-384,so400m-224} --repeat 3 --out "$O/select.json"
step skip_nonref 90 python3 benchmarks/bench_skip_nonref.py --repeat 3 --out "$O/skip_nonref.json"
step e2e_bframes 150 python3 benchmarks/bench_e2e.py --video ${FASTVID_BENCH_CLIPS:-/tmp/fastvid-bench-clips}/synthetic_60s_1280x720_30fps_gop250_bframes.mp4 --decoder cpu --skip-sampling --repeat 3 --ratios 1.0,0.1 --decode-tokens 16 --prune-repeat 5 --out "$O/e2e_bframes.json"
step gpu_decode 200 python3 benchmarks/bench_gpu_decode.py --repeat 3 --out "$O/gpu_decode.json"
step e2e_600 200 python3 benchmarks/bench_e2e.py --decoder both --skip-sampling --repeat 2 --ratios 1.0,0.1 --decode-tokens 16 --prune-repeat 5 --clip 600:1280x720 --out "$O/e2e_600.json"
for f in "$O"/*.log; do echo "######## $f"; tail -n 45 "$f" | cut -c1-300; done
