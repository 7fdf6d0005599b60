#!/usr/bin/env bash
# Reproduce: CPU data-parallel batch on a host that has GPUs (see RESULTS.md, known issue). Prints the traceback.
set -u
tmp=$(mktemp -d)
python3 examples/make_tiny_model.py "$tmp/m" >/dev/null
python3 - "$tmp" <<'PY'
import sys, csv
sys.path.insert(0, "tests")
from videogen import index_frames, write_video
d = sys.argv[1]
write_video(f"{d}/v.mp4", index_frames(24, 48, 64), fps=24)
with open(f"{d}/q.csv", "w", newline="") as f:
    w = csv.writer(f); w.writerow(["video", "question"]); [w.writerow(["v.mp4", f"q{i}?"]) for i in range(4)]
PY
python3 -m torch.distributed.run --nproc_per_node 2 -m fastvid_cli batch "$tmp/q.csv" --model "$tmp/m/llava-ov" \
  --saliency-model "$tmp/m/siglip-head" --device cpu --frames 8 --max-new-tokens 4 --debug 2>&1 | tail -80
