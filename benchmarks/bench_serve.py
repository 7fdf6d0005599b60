"""A resident model (`fastvid serve`) against a cold `fastvid ask` process, and the server under concurrent clients.

    # 2-core CPU, the demo model that ships in the package
    python benchmarks/bench_serve.py --device cpu
    # one GPU, a LLaVA-OneVision-7B-shaped checkpoint with random weights (built and saved once, ~16 GB)
    python benchmarks/bench_serve.py --device cuda --model 7b-shaped --ckpt /tmp/fastvid-7b-shaped

Part "cold" (wall time of the whole command, as a user waits for it; medians of --repeat after one untimed run
each): `fastvid ask CLIP QUESTION --model M -q` in a new process (imports torch and transformers, loads and warms
the model, answers) against `fastvid ask CLIP QUESTION --server URL --json` (a client process of the standard
library; the model is already loaded in the server). For the server runs it also reports the overhead: the
command's wall time minus the server-side TTFT + decode of the same answer (the report the server sends back).

Part "client": where the client's overhead goes, per phase of the same `ask --server` command (medians of --repeat,
after one untimed run), for `--json` and for the panel, and for the command run through the typer app (what every
`ask --server` was before cli_ask_server.py): process start and exit (the command's wall minus its time inside
Python's main), the client's imports, reading the command line ("cli"; through typer: importing and building
the app), the request (sent -> last event; minus the server-side TTFT + decode it
reports: HTTP and the server's framing), and the output after the answer (the JSON line or the panel).

Part "concurrency": 1, 4 and 16 clients (threads of this process, each with its own streaming connection) send
--rounds questions each, one after another, (a) all about ONE video (different questions, so the server shares the
video's features and prompt prefix and decodes waiting greedy requests together) and (b) each about ITS OWN video
(copies of the clip under other names: nothing is shared). Reported: aggregate decode throughput (answer tokens
of all clients per second of wall time), client-side TTFT p50/p95 (request sent -> first streamed text), the
server's own TTFT p50, and whether every answer equals the answer to the same question asked alone.

The server runs as a subprocess (`python -m fastvid_cli serve`), started once and stopped with SIGTERM at the end.
Results are printed and written as JSON (--out) with the device, versions and date.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

QUESTIONS = [
    "What shape is the blue object? Answer the question using a single word or phrase.",
    "What colour is the diamond? Answer the question using a single word or phrase.",
    "How many shapes appear in the video? Answer the question using a single word or phrase.",
    "What colour is the circle? Answer the question using a single word or phrase.",
    "What colour is the square? Answer the question using a single word or phrase.",
    "What colour is the triangle? Answer the question using a single word or phrase.",
    "Which shape appears first? Answer the question using a single word or phrase.",
    "Which shape appears last? Answer the question using a single word or phrase.",
    "What changes after the scene cut? Answer the question using a single word or phrase.",
    "What shape is blue? Answer the question using a single word or phrase.",
    "What shape is green? Answer the question using a single word or phrase.",
    "What shape is yellow? Answer the question using a single word or phrase.",
    "Which direction does the diamond move? Answer the question using a single word or phrase.",
    "What colour does the circle turn into? Answer the question using a single word or phrase.",
    "Is there a magenta shape? Answer the question using a single word or phrase.",
    "What is in the middle of the frame at the end? Answer the question using a single word or phrase.",
]


# ---------------------------------------------------------------------------------------------- the checkpoint
def save_7b_shaped(folder: Path, device: str) -> Path:
    """A LLaVA-OneVision-7B-shaped checkpoint with random bf16 weights (bench_ask.build_7b_shaped: SigLIP-so400m +
    Qwen2-7B, byte-level tokenizer, its own so400m-shaped saliency head), saved like a hub checkpoint so that
    `fastvid ask --model FOLDER` and `fastvid serve --model FOLDER` load it with from_pretrained. Reused when
    already there."""
    if (folder / "config.json").is_file() and (folder / "saliency_head.safetensors").is_file():
        print(f"using the 7B-shaped checkpoint in {folder}", flush=True)
        return folder
    import torch

    from bench_ask import build_7b_shaped
    from fastvid_cli.models.siglip_head import OWN_HEAD_FILE, write_head

    t0 = time.perf_counter()
    print(f"building a 7B-shaped checkpoint with random weights into {folder} (once; ~16 GB)…", flush=True)
    engine = build_7b_shaped(device, torch.bfloat16)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    engine.model.save_pretrained(tmp, max_shard_size="4GB")
    engine.adapter.tokenizer.save_pretrained(tmp)
    (tmp / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": 384, "width": 384}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255}))
    write_head(tmp / OWN_HEAD_FILE, engine.adapter.saliency_head.float(),
               {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16, "layer_norm_eps": 1e-6,
                "hidden_act": "gelu_pytorch_tanh"})
    del engine
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    print(f"  saved in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


# ---------------------------------------------------------------------------------------------- processes
def fastvid(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastvid_cli", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


class Server:
    """`fastvid serve` in a subprocess, on a free port; stopped with SIGTERM (it finishes what is in flight)."""

    def __init__(self, model_args: list[str], media_dir: Path, extra: list[str]):
        self.proc = subprocess.Popen(fastvid("serve", *model_args, "--port", "0", "--allowed-media-dir",
                                             str(media_dir), "--quiet", *extra),
                                     env=env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.url = None
        t0 = time.perf_counter()
        for line in self.proc.stderr:
            sys.stderr.write("  [serve] " + line)
            if "listening on " in line:
                self.url = line.split("listening on ")[1].split()[0]
            if "ready:" in line:
                break
        if self.url is None or self.proc.poll() is not None:
            raise SystemExit("the server did not start (see its output above)")
        self.ready_s = time.perf_counter() - t0
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for _line in self.proc.stderr:
            pass

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=300)


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr}")
    return wall, res.stdout


# ---------------------------------------------------------------------------------------------- parts
def part_cold(model_args: list[str], server: Server, clip: str, question: str, repeat: int,
              gen_args: list[str]) -> dict:
    print(f"\ncold `fastvid ask` process vs `fastvid ask --server` ({repeat} runs each, after one untimed run)",
          flush=True)
    cold_cmd = fastvid("ask", clip, question, *model_args, *gen_args, "-q")
    warm_cmd = fastvid("ask", clip, question, "--server", server.url, *gen_args, "--json")
    timed(cold_cmd)
    timed(warm_cmd)
    cold, warm, server_side, answers = [], [], [], set()
    for _ in range(repeat):  # interleaved, so that other load on the machine hits both alike
        wall, out = timed(cold_cmd)
        cold.append(wall)
        answers.add(out.strip())
        wall, out = timed(warm_cmd)
        report = json.loads(out)
        warm.append(wall)
        t = report["timings_ms"]
        server_side.append((t.get("ttft", 0.0) + t.get("decode", 0.0)) / 1e3)
        answers.add(report["answer"].strip())
    overhead = [w - s for w, s in zip(warm, server_side)]
    out = {"cold_ask_s": _stats(cold), "server_ask_s": _stats(warm), "server_ttft_plus_decode_s": _stats(server_side),
           "client_overhead_s": _stats(overhead), "speedup": round(statistics.median(cold) / statistics.median(warm), 2),
           "same_answer": len(answers) == 1, "server_ready_s": round(server.ready_s, 2)}
    print(f"  cold ask       {_fmt(out['cold_ask_s'])} s")
    print(f"  ask --server   {_fmt(out['server_ask_s'])} s  ({out['speedup']}x faster; server-side TTFT+decode "
          f"{_fmt(out['server_ttft_plus_decode_s'])} s, overhead {_fmt(out['client_overhead_s'])} s)")
    print(f"  same answer: {out['same_answer']}", flush=True)
    return out


# The `ask --server` command with timestamps: run in a new process as `python -c PHASES <fastvid args>`; writes its
# phases (seconds) as JSON to the file named by $FASTVID_BENCH_PHASES. ENTRY: the fast entry point or the typer app.
PHASES = """
import json, os, sys, time
t0 = time.perf_counter()
from fastvid_cli import client, remote, cli_ask_server
t_imports = time.perf_counter()
marks = {}
chat = client.Client.chat
def timed_chat(self, payload, on_text=None):
    marks["sent"] = time.perf_counter()
    try:
        done = chat(self, payload, on_text)
    finally:
        marks["answered"] = time.perf_counter()
    t = done["report"]["timings_ms"]
    marks["server"] = (t.get("ttft", 0.0) + t.get("decode", 0.0)) / 1e3
    return done
client.Client.chat = timed_chat
sys.argv = ["fastvid", *sys.argv[1:]]
def write(code):
    t_end = time.perf_counter()
    with open(os.environ["FASTVID_BENCH_PHASES"], "w") as f:
        json.dump({"code": code, "in_python": t_end - t0, "imports": t_imports - t0,
                   "parse": marks["sent"] - t_imports, "request": marks["answered"] - marks["sent"],
                   "server": marks["server"], "output": t_end - marks["answered"]}, f)
real_exit = os._exit
def timed_exit(code):  # the fast path ends with os._exit after its output (__main__._exit): its exit is measured
    write(code)
    real_exit(code)
os._exit = timed_exit
try:
    %s
except SystemExit as e:
    code = e.code
write(code)
"""
ENTRIES = {"fast": "from fastvid_cli.__main__ import main; main()",
           "typer": "from fastvid_cli.cli import _invoke; code = _invoke()"}


def part_client(server: Server, clip: str, question: str, repeat: int, gen_args: list[str]) -> dict:
    print(f"\nclient overhead of `fastvid ask --server` by phase (medians of {repeat}, ms)", flush=True)
    base = ["ask", clip, question, "--server", server.url, *gen_args]
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        phases_file = os.path.join(tmp, "phases.json")
        runs = {(entry, mode): [] for entry in ENTRIES for mode in ("--json", "panel")}
        for i in range(repeat + 1):  # the first round untimed
            for (entry, mode), rows in runs.items():
                cmd = [sys.executable, "-c", PHASES % ENTRIES[entry], *base, *([mode] if mode != "panel" else [])]
                t0 = time.perf_counter()
                res = subprocess.run(cmd, env={**env(), "FASTVID_BENCH_PHASES": phases_file}, capture_output=True,
                                     text=True)
                wall = time.perf_counter() - t0
                if res.returncode != 0:
                    raise SystemExit(f"{' '.join(cmd[3:])} failed ({res.returncode}):\n{res.stderr}")
                ph = json.loads(Path(phases_file).read_text())
                if i:
                    rows.append({"wall": wall, "start_exit": wall - ph["in_python"], "imports": ph["imports"],
                                 "cli": ph["parse"], "http": ph["request"] - ph["server"], "server": ph["server"],
                                 "output": ph["output"], "overhead": wall - ph["server"]})
    cols = ("wall", "server", "overhead", "start_exit", "imports", "cli", "http", "output")
    print(f"  {'command':22s}" + "".join(f"{c:>11s}" for c in cols))
    for (entry, mode), rows in runs.items():
        med = {c: round(statistics.median(r[c] for r in rows) * 1e3, 1) for c in cols}
        out[f"{entry} {mode}"] = med
        print(f"  {entry + ' ' + mode:22s}" + "".join(f"{med[c]:11.1f}" for c in cols), flush=True)
    print("  (overhead = wall - server-side TTFT+decode = start_exit + imports + cli + http + output; the panel's "
          "rich imports run on a thread during the request)", flush=True)
    return out


def _ask_stream(client, video_url: str, question: str, max_tokens: int) -> dict:
    from fastvid_cli.client import ask_payload

    t0 = time.perf_counter()
    first = None
    text = []
    for kind, value in client.stream_chat(ask_payload(video_url, question, model=None,
                                                      gen={"max_new_tokens": max_tokens, "temperature": 0.0},
                                                      fastvid={})):
        if kind == "text":
            if first is None:
                first = time.perf_counter()
            text.append(value)
        else:
            done = value
    end = time.perf_counter()
    report = done["report"]
    return {"answer": "".join(text), "ttft_s": (first or end) - t0, "server_ttft_s": report["timings_ms"]["ttft"] / 1e3,
            "tokens": report["new_tokens"], "start": t0, "end": end, "mode": report.get("decode_mode", "")}


def part_concurrency(server: Server, clips: list[str], clients_list: list[int], rounds: int, max_tokens: int) -> dict:
    from fastvid_cli.client import Client, file_url

    client = Client(server.url)
    print(f"\nconcurrent clients ({rounds} questions each, one after another; max {max_tokens} new tokens)", flush=True)
    reference: dict[tuple[str, str], str] = {}
    for clip in clips[:1]:  # every question asked alone first: the answers to compare with (and the warm-up)
        for q in QUESTIONS:
            reference[(clip, q)] = _ask_stream(client, file_url(clip), q, max_tokens)["answer"]
    results: dict = {}
    for scenario in ("one video", "many videos"):
        for n in clients_list:
            if scenario == "many videos" and n > len(clips):
                continue
            runs: list[dict] = []
            lock = threading.Lock()
            barrier = threading.Barrier(n)

            def work(i: int) -> None:
                clip = clips[0] if scenario == "one video" else clips[i]
                mine = []
                barrier.wait()
                for r in range(rounds):
                    q = QUESTIONS[(i * rounds + r) % len(QUESTIONS)]
                    res = _ask_stream(client, file_url(clip), q, max_tokens)
                    res.update(clip=clip, question=q)
                    mine.append(res)
                with lock:
                    runs.extend(mine)

            if scenario == "many videos":  # each client's video encoded once before timing, as "one video" was
                for clip in clips[:n]:
                    _ask_stream(client, file_url(clip), QUESTIONS[0], 1)
            threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
            tokens = sum(r["tokens"] for r in runs)
            ttft = sorted(r["ttft_s"] for r in runs)
            # the other clips are copies of clips[0] (other videos to the server, the same frames): the same answers
            equal = [r["answer"] == reference[(clips[0], r["question"])] for r in runs
                     if (clips[0], r["question"]) in reference]
            row = {"clients": n, "requests": len(runs), "tokens": tokens, "wall_s": round(wall, 3),
                   "decode_tok_per_s": round(tokens / wall, 1), "ttft_p50_s": round(_pct(ttft, 50), 4),
                   "ttft_p95_s": round(_pct(ttft, 95), 4),
                   "server_ttft_p50_s": round(statistics.median(r["server_ttft_s"] for r in runs), 4),
                   "batched": sum(r["mode"].startswith("batched") for r in runs),
                   "answers_equal_alone": f"{sum(equal)}/{len(equal)}" if equal else "–"}
            results.setdefault(scenario, []).append(row)
            print(f"  {scenario:11s} {n:3d} clients: {row['decode_tok_per_s']:8.1f} tok/s aggregate · TTFT p50 "
                  f"{row['ttft_p50_s'] * 1e3:7.1f} ms p95 {row['ttft_p95_s'] * 1e3:7.1f} ms (server p50 "
                  f"{row['server_ttft_p50_s'] * 1e3:.1f} ms) · {row['batched']}/{len(runs)} batched · answers as "
                  f"alone: {row['answers_equal_alone']}", flush=True)
        one = {r["clients"]: r for r in results.get(scenario, [])}
        if 1 in one and 16 in one:
            results[f"{scenario} 16 vs 1"] = round(one[16]["decode_tok_per_s"] / one[1]["decode_tok_per_s"], 2)
            print(f"  {scenario}: 16 clients give {results[f'{scenario} 16 vs 1']}x the aggregate tok/s of one",
                  flush=True)
    return results


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _stats(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3),
            "runs": [round(x, 3) for x in xs]}


def _fmt(s: dict) -> str:
    return f"{s['median']:.3f} [{s['min']:.3f}–{s['max']:.3f}]"


def environment(device: str) -> dict:
    from _common import environment as common

    info = common(device)
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    for dist in ("fastapi", "uvicorn"):
        try:
            from importlib.metadata import version

            info[dist] = version(dist)
        except Exception:
            info[dist] = None
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument("--model", default=None, help="demo (default on CPU), 7b-shaped (default on CUDA), or any "
                                                  "--model of fastvid")
    ap.add_argument("--ckpt", type=Path, default=Path(tempfile.gettempdir()) / "fastvid-7b-shaped",
                    help="where the 7B-shaped checkpoint is saved (once)")
    ap.add_argument("--clip", default=None, help="the video (default: examples/demo.mp4 for the demo, a 60 s "
                                                 "1280x720 synthetic clip otherwise)")
    ap.add_argument("--question", default=QUESTIONS[0])
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=5, help="cold/server runs each (medians)")
    ap.add_argument("--parts", default="cold,client,concurrency")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--rounds", type=int, default=4, help="questions per client in the concurrency part")
    ap.add_argument("--max-tokens", type=int, default=None, help="new tokens per answer (default: 16 for the "
                                                                 "demo, 64 for the 7B shape: it never stops early)")
    ap.add_argument("--serve-args", default="", help="more `fastvid serve` options, e.g. \"--threads 1\"")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    cuda = args.device.startswith("cuda")
    model = args.model or ("7b-shaped" if cuda else "demo")
    if model == "7b-shaped":
        model = str(save_7b_shaped(args.ckpt, args.device))
    max_tokens = args.max_tokens or (16 if model == "demo" else 64)
    if args.clip:
        clip = str(Path(args.clip).resolve())
    elif model == "demo":
        clip = str(REPO / "examples" / "demo.mp4")
    else:
        from _common import cached_clip

        clip = cached_clip(60)
    work = Path(tempfile.mkdtemp(prefix="fastvid-bench-serve-"))
    clips = [str(work / f"clip-00{Path(clip).suffix}")]
    shutil.copy(clip, clips[0])
    for i in range(1, max(args.clients)):  # copies under other names: other videos to the server
        clips.append(str(work / f"clip-{i:02d}{Path(clip).suffix}"))
        shutil.copy(clip, clips[-1])
    model_args = ["--model", model, "--device", args.device] + (["--frames", str(args.frames)] if args.frames else [])
    gen_args = ["--max-new-tokens", str(max_tokens)]
    info = environment(args.device)
    info.update(model=args.model or ("7b-shaped" if cuda else "demo"), clip=Path(clip).name, max_tokens=max_tokens)
    print(json.dumps(info), flush=True)
    server = Server(model_args, work, ["--max-batch", "16", "--max-queue", "256", *args.serve_args.split()])
    results: dict = {"environment": info}
    try:
        if "cold" in args.parts:
            results["cold"] = part_cold(model_args, server, clips[0], args.question, args.repeat, gen_args)
        if "client" in args.parts:
            results["client"] = part_client(server, clips[0], args.question, args.repeat, gen_args)
        if "concurrency" in args.parts:
            results["concurrency"] = part_concurrency(server, clips, args.clients, args.rounds, max_tokens)
    finally:
        code = server.stop()
        print(f"server stopped with SIGTERM: exit {code}", flush=True)
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
