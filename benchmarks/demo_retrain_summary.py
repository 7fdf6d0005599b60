"""The compact result of benchmarks/demo_retrain_gpu.sh: training speed and end accuracy, then per form and setting
the test accuracy, retention and accuracy per question type.

    python benchmarks/demo_retrain_summary.py DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    folder = Path(sys.argv[1])
    rows = []
    for line in (folder / "train.log").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    rows = [r for r in rows if isinstance(r, dict) and "step" in r]
    if rows:
        last = rows[-1]
        speed = sorted(r["steps_per_s"] for r in rows)[len(rows) // 2]
        wait = sorted(r["data_wait_share"] for r in rows)[len(rows) // 2]
        print(f"train: {last['step']} steps in {last['minutes']} min, median {speed} steps/s, data wait "
              f"{100 * wait:.0f}% · last qa_loss {last['qa_loss']} · first-token acc {last['first_token_acc']}")
        print("  by type (last log): " + " ".join(f"{t} {v:.2f}" for t, v in last["by_type"].items()))
    else:
        print("train: no log rows (see train.log)")
    weights = folder / "weights"
    if weights.is_dir():
        mb = sum(p.stat().st_size for p in weights.iterdir()) / 1e6
        print(f"weights: {mb:.1f} MB")
    for form in ("mc", "short"):
        path = folder / f"eval_{form}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            print(f"{form}: no result (see {path.with_suffix('.err').name})")
            continue
        for s in data["settings"]:
            ret = "" if s["retention"] is None else f" retention {100 * s['retention']:.1f}%"
            print(f"{form:<5} {s['setting']:<14} {s['accuracy_pct']}% ({s['correct']}/{s['n']}){ret} · "
                  f"tokens {s['mean_video_tokens_kept']} · TTFT {s['mean_ttft_ms']:.1f} ms · errors {s['errors']}")
        types = data["by_type"]
        names = [s["setting"] for s in data["settings"]]
        print(f"{form:<5} by type: " + " | ".join(
            f"{t} " + "/".join(f"{types[t][n]['accuracy_pct']:.0f}" for n in names if n in types[t]) for t in types)
            + f"   ({' / '.join(names)})")


if __name__ == "__main__":
    main()
