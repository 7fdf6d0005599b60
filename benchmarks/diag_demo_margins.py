"""How robust is the demo model's answer? Logit margins of a clip + question over pruning ratios x methods.

    python benchmarks/diag_demo_margins.py                       # the README example (examples/demo.mp4)
    python benchmarks/diag_demo_margins.py --seed 2000015        # a synthetic clip, rendered and H.264-encoded
    python benchmarks/diag_demo_margins.py --search 2000000 200  # screen held-out seeds for a robust example
    python benchmarks/diag_demo_margins.py --jitter 5            # ... plus 5 runs on slightly perturbed features
    python benchmarks/diag_demo_margins.py --search 2000000 300 --model OUT/weights --json best.json
                                                     # after a retrain: pick the new README example in one run

A token's margin is its logit minus the best other token's (`fastvid_cli.decoding.logit_margin`), recorded at every
generated step, eos included, by the eager greedy loop (`GenerationOptions(margins=True)`, what `ask --margins`
uses). The table shows each setting's answer and the smallest margin over its steps. --device/--dtype run it
elsewhere (the goal also asks for bf16 on a GPU: --device cuda --dtype bfloat16). A margin near 0 is a coin
that rounding decides: another CPU's float32 kernels flipped the old example (seed 2_000_015) from `red` to
`yellow` at fastvid 0.1, where its first token won by 0.07. Each answer runs the `ask` path (one prefill of the
whole prompt, no shared prefix) on the demo model, CPU float32, frames sampled from the H.264 file. The question
is asked as the README types it (one line: "QUESTION Answer the question using a single word or phrase.");
--newline asks it as `fastvid eval --form short` does (`synth.short_prompt`: the instruction on its own line).

--jitter N adds N runs per setting with every feature tensor scaled by (1 + eps * noise) (eps 1e-3, far more than
kernel rounding): it also catches answers whose pruning (which tokens are kept) sits on a knife edge.

--search screens every question of every clip of seeds START .. START+COUNT-1 (held out: training used seeds below
800_000, the test split 1_000_000 .. 1_000_511) on the settings that are hardest for this model first, and prints
the full table of the clips whose every setting answers right with a margin of at least --min, in both prompt
forms (README and eval). It ends with the best candidate (largest smallest margin over every method x ratio and
both forms) and the constants to put in tests/demo_example.py (SEED, QA, ANSWER, QUESTION); with none found, the
nearest misses (right everywhere, the largest smallest margin below --min) so --min can be chosen.
--model points it at another weights folder (a retrained demo) instead of the shipped one.

--decode-to DIR samples the README example and the --search seeds here (PyAV) and keeps their frames (~8 kB a clip);
--decoded DIR then takes them from there instead of decoding: how the bf16 search runs in the same device call as
the demo's training (benchmarks/demo_retrain_gpu.sh), where PyAV's wheel cannot travel beside the training state.
"""

from __future__ import annotations

import argparse
import json
import lzma
import pickle
import tempfile
import time
from pathlib import Path

import torch

from _common import environment
from fastvid_cli import synth
from fastvid_cli.engine import Engine, GenerationOptions, PruneOptions
from fastvid_cli.evaluate import short_correct

ROOT = Path(__file__).resolve().parents[1]
DEMO_CLIP = ROOT / "examples" / "demo.mp4"
DEMO_SEED = 2_000_000  # the clip examples/demo.mp4 is rendered from (tests/test_demo.py checks it)
DEMO_QA = 2  # which of the seed's questions the README asks ("What shape is the blue object?")
RATIOS = (1.0, 0.5, 0.25, 0.1, 0.05)
METHODS = ("fastvid", "holitom", "holitom-orig", "uniform", "random")
# Asked first in --search: where the demo model's answers most often break (few tokens, random or pooled ones).
SCREEN = (("none", 1.0), ("random", 0.05), ("uniform", 0.05), ("fastvid", 0.05), ("holitom", 0.05),
          ("fastvid", 0.1))


def prompt(qa, newline: bool = False) -> str:
    """The short-answer prompt: as `eval --form short` asks it (newline), or on one line as the README types it."""
    return synth.short_prompt(qa) if newline else f"{qa.question} Answer the question using a single word or phrase."


def settings() -> list[tuple[str, float]]:
    return [("none", 1.0)] + [(m, r) for m in METHODS for r in RATIOS]


def prune_options(engine: Engine, method: str, ratio: float) -> PruneOptions:
    """What `fastvid ask --method M --ratio R` prunes with (the method's parameters at the family's defaults)."""
    from fastvid_cli.pruning import resolve_params

    return PruneOptions(method=method, ratio=1.0 if method == "none" else ratio,
                        params=resolve_params(method, engine.defaults["method_family"], {}))


def jittered(feats, eps: float, seed: int):
    """A copy of `feats` with each float tensor scaled elementwise by (1 + eps * N(0, 1)) (seeded, CPU)."""
    import dataclasses

    gen = torch.Generator().manual_seed(seed)

    def shake(t):
        if t is None or not t.is_floating_point():
            return t
        return t * (1 + eps * torch.randn(t.shape, generator=gen, dtype=t.dtype))

    return dataclasses.replace(feats, embeds=shake(feats.embeds), saliency=shake(feats.saliency),
                               frame_features=shake(feats.frame_features),
                               attn_received=shake(feats.attn_received))


class Probe:
    """One clip, encoded once; answers its questions under any pruning setting with margins."""

    def __init__(self, engine: Engine, video: str, clip=None):
        self.engine = engine
        self.video = video
        sess = engine.session(video, prune=PruneOptions(method="none", ratio=1.0), clip=clip,
                              sample_ms=None if clip is None else 0.0)
        self.clip, self.feats = sess.clip, sess.feats

    def ask(self, question: str, method: str, ratio: float, feats=None, max_new_tokens: int = 16):
        sess = self.engine.session_from_features(self.video, self.clip, feats or self.feats,
                                                 prune_options(self.engine, method, ratio))
        r = sess.answer(question, GenerationOptions(max_new_tokens=max_new_tokens, margins=True),
                        reuse_prefix=False)
        return r.answer, r.logit_margins, r.stop_reason

    def cell(self, question: str, gold: str | None, method: str, ratio: float, jitter: int, eps: float) -> dict:
        answer, margins, stop = self.ask(question, method, ratio)
        out = dict(method=method, ratio=ratio, answer=answer, margins=margins, min_margin=min(margins),
                   ended=stop == "eos", correct=None if gold is None else short_correct(answer, gold))
        if jitter:
            worst, flips = out["min_margin"], 0
            for j in range(jitter):
                a, m, _ = self.ask(question, method, ratio, feats=jittered(self.feats, eps, j))
                flips += a != answer
                worst = min(worst, min(m) if a == answer else -min(m))
            out.update(jitter_min_margin=worst, jitter_flips=flips)
        return out


def render_seed(seed: int, folder: Path) -> Path:
    """The seed's clip as `synth.write_clip` encodes it (how examples/demo.mp4 is made), in `folder`."""
    spec, _ = synth.generate(seed)
    return synth.write_clip(folder / f"synth_{seed}.mp4", synth.render(spec))


def decoded_path(folder: Path, seed: int | None) -> Path:
    """Where --decode-to puts a clip's sampled frames (the README example's: seed None)."""
    return folder / ("demo.pkl.xz" if seed is None else f"seed_{seed}.pkl.xz")


def decode_to(engine: Engine, folder: Path, seeds: list[int]) -> None:
    """Sample the README example and each seed's H.264 clip here, as the engine samples them (PyAV), and keep the
    frames in `folder`: --decoded then needs no decoder (the GPU machine has no PyAV, and carrying its wheel beside
    the training state would pass the device's carry limit)."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [None] + seeds:
            video = str(DEMO_CLIP if seed is None else render_seed(seed, Path(tmp)))
            clip, _ = engine.sample(video, engine.frame_plan())
            decoded_path(folder, seed).write_bytes(lzma.compress(pickle.dumps(clip)))  # ~8 kB each
    print(f"{len(seeds) + 1} clips sampled into {folder}")


def load_decoded(folder: Path | None, seed: int | None):
    """The clip --decode-to kept for `seed` (None: the README example), or None (no folder, or no such file)."""
    path = None if folder is None else decoded_path(folder, seed)
    return pickle.loads(lzma.decompress(path.read_bytes())) if path is not None and path.exists() else None


def table(probe: Probe, question: str, gold: str | None, jitter: int, eps: float) -> list[dict]:
    return [probe.cell(question, gold, m, r, jitter, eps) for m, r in settings()]


def print_table(cells: list[dict], title: str) -> None:
    print(title)
    jit = "jitter_min_margin" in cells[0]
    head = f"{'method':<13}" + "".join(f"{r:>16g}" for r in RATIOS)
    print(head)
    by = {(c["method"], c["ratio"]): c for c in cells}
    for m in ("none",) + METHODS:
        row = f"{m:<13}"
        for r in (RATIOS[:1] if m == "none" else RATIOS):
            c = by[(m, 1.0 if m == "none" else r)]
            mark = "" if c["correct"] in (None, True) else "!"
            text = c["answer"].strip()[:8] + mark
            row += f"{text:>9} {c['min_margin']:6.2f}"
        print(row)
    worst = min(cells, key=lambda c: c["min_margin"])
    print(f"min margin {worst['min_margin']:.2f} ({worst['method']} {worst['ratio']:g}, step margins "
          f"{' '.join(f'{m:.2f}' for m in worst['margins'])})")
    if jit:
        w = min(cells, key=lambda c: c["jitter_min_margin"])
        print(f"with jitter: min margin {w['jitter_min_margin']:.2f} ({w['method']} {w['ratio']:g}), "
              f"answers changed in {sum(c['jitter_flips'] for c in cells)} runs")
    wrong = [f"{c['method']} {c['ratio']:g}" for c in cells if c["correct"] is False]
    if wrong:
        print("wrong answers (!): " + ", ".join(wrong))


def search_seeds(start: int, count: int) -> list[int]:
    """The held-out seeds of START .. START+COUNT-1: not in the test split, not below the training range's end."""
    test_seeds = {r["seed"] for r in synth.read_split(synth.shipped_split_path())}
    return [s for s in range(start, start + count) if s not in test_seeds and s >= 1_000_000]


def search(engine: Engine, start: int, count: int, least: float, jitter: int, eps: float,
           near: list | None = None, seconds: float | None = None, decoded: Path | None = None,
           match: str | None = None) -> list[dict]:
    """Candidates (every setting right, margins >= least, both prompt forms), in seed order. `near` (a list)
    collects (min margin, seed, qa, answer) of questions answered right everywhere but below `least`. With
    `seconds`, no new seed is started after that long. With `decoded` (a --decode-to folder), only the seeds
    whose frames it holds, from there. With `match`, only the questions containing that text (any case)."""
    t_end = time.perf_counter() + seconds if seconds else None
    def good(cells):
        ok = all(c["correct"] and c["ended"] for c in cells) and min(c["min_margin"] for c in cells) >= least
        return ok and (not jitter or all(c["jitter_flips"] == 0 for c in cells))

    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in search_seeds(start, count):
            clip = load_decoded(decoded, seed)
            if decoded is not None and clip is None:
                continue
            if t_end is not None and time.perf_counter() > t_end:
                print(f"--seconds {seconds:g} spent: stopped before seed {seed}", flush=True)
                break
            _, qas = synth.generate(seed)
            asked = [(i, qa) for i, qa in enumerate(qas) if not match or match.lower() in qa.question.lower()]
            if not asked:
                continue
            video = f"synth_{seed}.mp4" if clip is not None else str(render_seed(seed, Path(tmp)))
            probe = Probe(engine, video, clip)
            for i, qa in asked:
                question = prompt(qa)
                ok = True
                screened = []
                for m, r in SCREEN:  # cheap rejection first
                    answer, margins, stop = probe.ask(question, m, r)
                    screened.append(min(margins))
                    if not (short_correct(answer, qa.short_answer) and stop == "eos"):
                        ok = False
                        break
                if ok and near is not None and min(screened) < least:
                    near.append((min(screened), seed, i, qa.short_answer))
                if not ok or min(screened) < least:
                    continue
                cells = table(probe, question, qa.short_answer, jitter, eps)
                worst = min(c["min_margin"] for c in cells)
                both = good(cells)
                if both:  # the eval's form of the same question too
                    eval_cells = table(probe, prompt(qa, newline=True), qa.short_answer, jitter, eps)
                    worst_eval = min(c["min_margin"] for c in eval_cells)
                    both = good(eval_cells)
                print(f"seed {seed} qa {i} {qa.type:<16} {qa.short_answer!r:<12} min margin {worst:6.2f}"
                      + (f" (eval form {worst_eval:.2f})" if good(cells) else "")
                      + ("  <- candidate" if both else ""), flush=True)
                if both:
                    found.append(dict(seed=seed, qa=i, type=qa.type, question=question, answer=qa.short_answer,
                                      min_margin=min(worst, worst_eval), cells=cells, eval_cells=eval_cells))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video", nargs="?", help="video file (default: examples/demo.mp4)")
    ap.add_argument("question", nargs="?", help="question (default: the README's)")
    ap.add_argument("--seed", type=int, help="render this synthetic seed instead of reading a file")
    ap.add_argument("--qa", type=int, default=0, help="with --seed: which of its questions (0: the primary one)")
    ap.add_argument("--newline", action="store_true", help="ask as `eval --form short` does (synth.short_prompt)")
    ap.add_argument("--search", nargs=2, type=int, metavar=("START", "COUNT"))
    ap.add_argument("--min", type=float, default=2.0, help="--search: smallest acceptable margin (default 2.0)")
    ap.add_argument("--jitter", type=int, default=0, help="extra runs per setting on perturbed features")
    ap.add_argument("--eps", type=float, default=1e-3, help="relative size of the --jitter perturbation")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--model", default="demo", help="model to probe (default: the shipped demo; a weights folder "
                                                    "such as a retrain's --out)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--device", default="cpu", help="where the model runs (default cpu; e.g. cuda)")
    ap.add_argument("--dtype", default="float32", help="the model's dtype (default float32; e.g. bfloat16 on cuda)")
    ap.add_argument("--match", metavar="TEXT", help="--search: only the questions containing TEXT (any case), "
                    "e.g. to keep the README's question and change only its clip")
    ap.add_argument("--seconds", type=float, help="--search: start no new seed after this many seconds")
    ap.add_argument("--decode-to", type=Path, metavar="DIR", help="only sample the README example and the "
                    "--search seeds into DIR (for --decoded on a machine without PyAV), then stop")
    ap.add_argument("--decoded", type=Path, metavar="DIR", help="take the frames from a --decode-to folder instead "
                    "of decoding (--search: only its seeds)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype)
    env = environment(args.device) | {"threads": torch.get_num_threads(), "dtype": args.dtype}
    print(" · ".join(f"{k} {env[k]}" for k in ("date", "cpu", "threads", "torch", "transformers", "git")))
    if args.decode_to:
        decode_to(engine, args.decode_to, search_seeds(*args.search) if args.search else [])
        return
    if args.search:
        near: list = []
        found = search(engine, *args.search, args.min, args.jitter, args.eps, near, args.seconds, args.decoded,
                       args.match)
        found.sort(key=lambda f: -f["min_margin"])
        for f in found[:5]:
            print()
            print_table(f["cells"], f"seed {f['seed']} qa {f['qa']} ({f['type']}): {f['question']!r} -> "
                                    f"{f['answer']!r}")
            print_table(f["eval_cells"], "the same, asked as eval --form short does")
        print()
        if found:
            best = found[0]
            print(f"best of {len(found)} candidates: seed {best['seed']} qa {best['qa']} ({best['type']}), min margin "
                  f"{best['min_margin']:.2f} over {len(best['cells'])} settings x 2 prompt forms")
            print(f"tests/demo_example.py: SEED, QA = {best['seed']:_}, {best['qa']}; ANSWER = {best['answer']!r}; "
                  f"QUESTION = {best['question']!r}")
        else:
            near.sort(reverse=True)
            print(f"no candidate with every margin >= {args.min}; nearest (screened settings only): "
                  + ", ".join(f"seed {s} qa {q} {a!r} {m:.2f}" for m, s, q, a in near[:5]))
        result = dict(env=env, model=args.model, found=found,
                      near=[dict(min_margin=m, seed=s, qa=q, answer=a) for m, s, q, a in near[:20]])
    else:
        gold = None
        with tempfile.TemporaryDirectory() as tmp:
            if args.seed is not None:
                _, qas = synth.generate(args.seed)
                qa = qas[args.qa]
                clip = load_decoded(args.decoded, args.seed)
                video = f"synth_{args.seed}.mp4" if clip is not None else str(render_seed(args.seed, Path(tmp)))
                question, gold = args.question or prompt(qa, args.newline), qa.short_answer
            else:
                _, qas = synth.generate(DEMO_SEED)
                video = args.video or str(DEMO_CLIP)
                clip = None if args.video else load_decoded(args.decoded, None)
                question = args.question or prompt(qas[DEMO_QA], args.newline)
                gold = qas[DEMO_QA].short_answer if args.video is None and args.question is None else None
            cells = table(Probe(engine, video, clip), question, gold, args.jitter, args.eps)
        print_table(cells, f"{video if args.seed is None else f'seed {args.seed}'}: {question!r}"
                           + (f" -> {gold!r}" if gold else ""))
        result = dict(env=env, video=video, question=question, gold=gold, cells=cells)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(f"({time.perf_counter() - t0:.0f} s measured)")


if __name__ == "__main__":
    main()
