"""Data-parallel `fastvid batch` on every GPU of this host vs one process, same CSV (tiny random checkpoint).

    python benchmarks/dp_check.py [--rows 12] [--videos 4]

Writes a tiny LLaVA-OV checkpoint and synthetic clips, answers the CSV once with one process and once with
`torchrun --nproc_per_node <GPUs>`, and checks that the merged output has every row once, in CSV order, with the
same greedy answers. Prints wall times (they include model loads: this checks the path, it is not a benchmark).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fastvid_cli.tiny import save_llava_checkpoint, save_saliency_checkpoint  # noqa: E402
from videogen import index_frames, write_video  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--nproc", type=int, default=torch.cuda.device_count() or 2)
    args = ap.parse_args()
    gpus = args.nproc
    tmp = Path(tempfile.mkdtemp())
    model = save_llava_checkpoint(tmp / "llava")
    sal = save_saliency_checkpoint(tmp / "sal")
    videos = []
    for v in range(args.videos):
        frames = index_frames(40 + 8 * v, 96, 128)
        videos.append(write_video(str(tmp / f"v{v}.mp4"), frames[v:].copy(), fps=24))
    with open(tmp / "q.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "video", "question"])
        for i in range(args.rows):
            w.writerow([f"q{i}", Path(videos[i % args.videos]).name, f"Question {i}: what happens?"])
    common = ["batch", str(tmp / "q.csv"), "--model", str(model), "--saliency-model", str(sal), "--frames", "8",
              "--max-new-tokens", "12", "--dtype", "float32"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fastvid_cli", *common, "-o", str(tmp / "one.jsonl")], check=True, env=env)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", "-m", "fastvid_cli",
                    *common, "-o", str(tmp / "dp.jsonl")], check=True, env=env)
    t_dp = time.perf_counter() - t0
    one = [json.loads(x) for x in (tmp / "one.jsonl").read_text().splitlines()]
    dp = [json.loads(x) for x in (tmp / "dp.jsonl").read_text().splitlines()]
    ids = [f"q{i}" for i in range(args.rows)]
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"# dp_check: {gpus} processes on {name} | torch {torch.__version__} | {time.strftime('%Y-%m-%d')}")
    print(f"single process: {t_one:.1f} s; torchrun x{gpus}: {t_dp:.1f} s (both include model loads)")
    print(f"merged rows in CSV order, each once: {[r['id'] for r in dp] == ids}; all ok: "
          f"{all(r['status'] == 'ok' for r in dp)}; devices used: {sorted({r['device'] for r in dp})}")
    print(f"answers equal to the single-process run: {[r['answer'] for r in dp] == [r['answer'] for r in one]}")


if __name__ == "__main__":
    main()
