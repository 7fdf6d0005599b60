#!/usr/bin/env bash
# One device call (carry .whl; default deadline 330 s) for what needs the GPU after the demo's retraining finished
# and its new weights and README example went into the work tree: the README example's logit margins in bf16 on the
# GPU, in both prompt forms (issue #18's goal; the finishing training call already measured them for the example of
# its day and the searched seeds, so this repeats them on the shipped files), then `--select` with the selector
# timeline (issue #16: where the embedding time goes) and the CUDA-only tests.
#     DEADLINE=330 bash benchmarks/gpu_session9.sh
set -u
DEADLINE=${DEADLINE:-330}
source "$(dirname "$0")/_device.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
step margins_bf16 60 python3 benchmarks/diag_demo_margins.py --device cuda --dtype bfloat16 --json "$O/margins_bf16.json"
step margins_bf16_eval 60 python3 benchmarks/diag_demo_margins.py --newline --device cuda --dtype bfloat16 --json "$O/margins_bf16_eval.json"
step select 130 python3 benchmarks/bench_select.py --decoder cpu --selectors so400m-384 --repeat 3 --out "$O/select.json"
step tests 70 python3 -m pytest -q -p no:cacheprovider tests/test_siglip_scorer.py tests/test_frame_choice.py tests/test_video_gpu.py
for f in "$O"/*.log; do echo "######## $f"; tail -n 24 "$f" | cut -c1-300; done
