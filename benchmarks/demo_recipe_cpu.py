"""Issue #18: the demo training recipe of a given commit against the current one, on the CPU, same seed and budget.

    OMP_NUM_THREADS=1 python benchmarks/demo_recipe_cpu.py --rev 5ce0f82 --log old.json -- --minutes 15 --batch 4
    OMP_NUM_THREADS=1 python benchmarks/demo_recipe_cpu.py --log new.json -- --minutes 15 --batch 4
    (--mini before "--": a scaled-down model for both, see --help)
    python benchmarks/demo_recipe_cpu.py --show [--window 3] old.json new.json     # the per-type curves

--rev loads fastvid_cli/demo/train.py as it was at that commit (git show) instead of the working tree's; the
arguments after "--" go to that recipe's own parser (--device cpu --workers 0 are added). One thread; nothing is
saved but the training log (train_log.json's content) at --log. Per-type first-token accuracies are printed per
log row, then the last --tail rows averaged.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def recipe(rev: str | None):
    if rev is None:
        from fastvid_cli.demo import train

        return train
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:fastvid_cli/demo/train.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"train_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"train_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def show(paths: list[str], window: int) -> None:
    """Per-type first-token accuracy curves of saved logs, `window` log rows averaged per line."""
    for path in paths:
        summary = json.loads(Path(path).read_text())
        rows = [r for r in summary["log"] if "by_type" in r]
        print(f"{path}: {summary['steps']} steps, {summary['minutes']} min")
        types = list(rows[0]["by_type"]) if rows else []
        print("  min   step  all   " + " ".join(t[:8].rjust(8) for t in types))
        for i in range(0, len(rows), window):
            part = rows[i:i + window]
            acc = sum(r["first_token_acc"] for r in part) / len(part)
            cols = " ".join(f"{sum(r['by_type'][t] for r in part) / len(part):8.3f}" for t in types)
            print(f"  {part[-1]['minutes']:5.1f} {part[-1]['step']:5d} {acc:.3f} {cols}")


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == "--show":  # --show [--window N] LOG...
        window = int(argv[2]) if len(argv) > 2 and argv[1] == "--window" else 3
        show(argv[3:] if argv[1:2] == ["--window"] else argv[1:], window)
        return
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default=None, help="commit whose train.py to run (default: the working tree's)")
    ap.add_argument("--log", required=True)
    ap.add_argument("--tail", type=int, default=3, help="log rows averaged for the final line")
    ap.add_argument("--mini", action="store_true",
                    help="scaled-down model for both recipes (tower 2x96, LLM 128 wide: pass --text-layers to the "
                         "new recipe to match the old one's 4), so a CPU run reaches more steps")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    torch.set_num_threads(1)
    if args.mini:  # both recipes read these dicts when they build the model
        from fastvid_cli import demo

        demo.VISION.update(hidden_size=96, intermediate_size=384, num_hidden_layers=2, num_attention_heads=2)
        demo.TEXT.update(hidden_size=128, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
    train = recipe(args.rev)
    targs = train.parser().parse_args(["--device", "cpu", "--workers", "0", *extra])
    summary = train.fit(targs).summary
    Path(args.log).write_text(json.dumps(summary, indent=1))
    rows = [r for r in summary["log"] if "by_type" in r][-args.tail:]
    if rows:
        types = rows[-1]["by_type"]
        mean = {t: round(sum(r["by_type"][t] for r in rows) / len(rows), 3) for t in types}
        print(json.dumps(dict(rev=args.rev or "worktree", steps=summary["steps"], last_rows=len(rows),
                              first_token_acc=round(sum(r["first_token_acc"] for r in rows) / len(rows), 3),
                              by_type=mean)))


if __name__ == "__main__":
    main()
