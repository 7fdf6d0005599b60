"""Every command with `--server`: the same output as the same command run locally, nothing heavy imported by the
client, and `fastvid chat` driven through stdin (with a server and with a local model)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from typer.testing import CliRunner  # noqa: E402

from fastvid_cli.cli import app  # noqa: E402
from fastvid_cli.server import ServeConfig, Service  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
from demo_example import ANSWER, QUESTION  # noqa: E402 - the README example: its question and answer
LOCAL = ["--model", "demo", "--device", "cpu", "--no-cache"]
# fields of a Report that depend on the run, not on the answer
RUN_FIELDS = {"timings_ms", "decode_tokens_per_s", "notes", "cache", "decode_mode"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    shutil.copy(REPO / "examples" / "demo.mp4", root / "demo.mp4")
    return root


@pytest.fixture(scope="module")
def url(folder):
    svc = Service(ServeConfig(model="demo", device="cpu", dtype="float32", port=0, media_dirs=[str(folder)],
                              no_cache=True))
    svc.start()
    yield svc.url
    svc.stop()


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def run(runner, args, **kw):
    res = runner.invoke(app, args, **kw)
    return res


def test_ask_server_prints_what_ask_prints(runner, url, folder):
    clip = str(folder / "demo.mp4")
    local_json = run(runner, ["ask", clip, QUESTION, *LOCAL, "--json"])
    remote_json = run(runner, ["ask", clip, QUESTION, "--server", url, "--json"])
    assert local_json.exit_code == 0 and remote_json.exit_code == 0, remote_json.stderr
    local, remote = json.loads(local_json.stdout), json.loads(remote_json.stdout)
    assert set(local) == set(remote)
    assert {k: v for k, v in local.items() if k not in RUN_FIELDS} == \
           {k: v for k, v in remote.items() if k not in RUN_FIELDS}
    assert set(local["timings_ms"]) - {"sample_wait"} <= set(remote["timings_ms"])
    local_plain = run(runner, ["ask", clip, QUESTION, *LOCAL])
    remote_plain = run(runner, ["ask", clip, QUESTION, "--server", url])
    assert local_plain.stdout == remote_plain.stdout == f"{ANSWER}\n"
    def rows(text: str) -> list[str]:  # the panel's row labels, without the run-dependent ones
        labels = [line[2:17].strip() for line in text.splitlines() if line.startswith("│ ") and line[2] != " "]
        return [x for x in labels if x not in ("feature cache", "note")]

    assert rows(remote_plain.stderr) == rows(local_plain.stderr) + ["server"]  # the panel, saying where it ran
    assert url in remote_plain.stderr
    # options that belong to the server
    wrong = run(runner, ["ask", clip, QUESTION, "--server", url, "--model", "llava-ov-7b"])
    assert wrong.exit_code == 2 and "serves demo" in wrong.stderr
    assert run(runner, ["ask", clip, QUESTION, "--server", url, "--dtype", "float16"]).exit_code == 2
    assert run(runner, ["ask", clip, QUESTION, "--server", url, "--model", "demo", "-q"]).stdout == f"{ANSWER}\n"
    missing = run(runner, ["ask", str(folder / "nope.mp4"), QUESTION, "--server", url])
    assert missing.exit_code == 3 and "video not found: " in missing.stderr
    down = run(runner, ["ask", clip, QUESTION, "--server", "http://127.0.0.1:9"])
    assert down.exit_code == 9 and "cannot reach the fastvid server" in down.stderr


@pytest.mark.parametrize("options", [["--dyseg-tau", "0.5", "--dtm-p", "2", "-r", "0.3"],
                                     ["--method", "random", "--random-seed", "3"],
                                     ["--method", "vidcom2", "--vidcom2-variant", "vllm"]])
def test_ask_server_sends_the_method_options(runner, url, folder, options):
    """The method options go by parameter name and the server resolves them as a local ask does."""
    clip = str(folder / "demo.mp4")
    local = run(runner, ["ask", clip, QUESTION, *LOCAL, *options, "--json"])
    remote = run(runner, ["ask", clip, QUESTION, "--server", url, *options, "--json"])
    assert local.exit_code == 0 and remote.exit_code == 0, remote.stderr
    lj, rj = json.loads(local.stdout), json.loads(remote.stdout)
    for key in ("method", "ratio", "params", "video_tokens_kept", "segments", "answer"):
        assert lj[key] == rj[key], key
    # an option of another method is refused here, as a local ask refuses it
    res = run(runner, ["ask", clip, QUESTION, "--server", url, "--method", "uniform", "--dyseg-tau", "0.5"])
    assert res.exit_code == 2 and "--dyseg-tau" in res.stderr


def test_a_video_outside_the_roots_is_uploaded(runner, url, tmp_path):
    clip = tmp_path / "elsewhere.mp4"  # not under the server's allowed folder: sent as an upload
    shutil.copy(REPO / "examples" / "demo.mp4", clip)
    res = run(runner, ["ask", str(clip), QUESTION, "--server", url, "--json"])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["answer"] == ANSWER and data["video"] == str(clip)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    res = run(runner, ["ask", str(broken), QUESTION, "--server", url])
    assert res.exit_code == 4 and str(broken) in res.stderr and "fastvid-upload" not in res.stderr


CLIENT_RUN = """
import os, sys
sys.argv = ["fastvid", *sys.argv[1:]]
os._exit = sys.exit  # the fast path ends with os._exit (__main__._exit): here the module list is printed first
try:
    from fastvid_cli.{module} import {entry}
    code = {entry}()
except SystemExit as e:
    code = e.code
mods = sorted({{m.split(".")[0] for m in sys.modules}})
print("RESULT", code, " ".join(mods), file=sys.stderr)
"""
# never on the client's path: the model's libraries, the server's, and numpy
HEAVY = {"torch", "transformers", "numpy", "httpx", "fastapi", "starlette", "uvicorn", "av"}


def run_client(args: list[str], module: str = "__main__", entry: str = "main"):
    """A `fastvid …` command in a new process through `module.entry`: (exit code, top-level modules it imported,
    stdout, stderr without the RESULT line)."""
    res = subprocess.run([sys.executable, "-c", CLIENT_RUN.format(module=module, entry=entry), *args],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = res.stderr.splitlines(keepends=True)
    result = next(ln for ln in lines if ln.startswith("RESULT"))
    _, code, *mods = result.split()
    return int(code), set(mods), res.stdout, "".join(ln for ln in lines if ln is not result)


def test_the_client_imports_neither_torch_nor_transformers(url, folder):
    """Not the typer command either; neither typer, click, pydantic nor rich for an answer without the panel
    (cli_ask_server.py), rich only for the panel."""
    ask = ["ask", str(folder / "demo.mp4"), QUESTION, "--server", url]
    code, mods, out, _ = run_client([*ask, "-q"], "cli", "_invoke")  # the typer command
    assert (code, out) == (0, f"{ANSWER}\n") and not mods & HEAVY
    light = HEAVY | {"typer", "click", "pydantic", "pydantic_core", "rich"}
    for extra in (["-q"], ["--json", "--model", "demo", "--dyseg-tau", "0.5"]):
        code, mods, out, err = run_client([*ask, *extra])
        assert code == 0 and out.startswith((ANSWER, f'{{"answer": "{ANSWER}"')), err
        assert not mods & light, sorted(mods & light)
    code, mods, out, err = run_client(ask)
    assert code == 0 and "fastvid" in err and "rich" in mods and not mods & (light - {"rich"})


def test_the_fast_path_prints_what_the_typer_command_prints(url, folder, tmp_path):
    """`fastvid ask … --server` without typer (cli_ask_server.py): stdout, the panel, --json and the errors of the
    typer command, byte for byte where nothing was measured."""
    clip = str(folder / "demo.mp4")

    def both(args):
        return run_client(args), run_client(args, "cli", "_invoke")

    (fc, _, fout, ferr), (tc, _, tout, terr) = both(["ask", clip, QUESTION, "--server", url, "--json", "-r", "0.3",
                                                     "--dtm-p", "2", "--max-new-tokens", "4"])
    assert fc == tc == 0
    fast, typed = json.loads(fout), json.loads(tout)
    assert {k: v for k, v in fast.items() if k not in RUN_FIELDS} == \
           {k: v for k, v in typed.items() if k not in RUN_FIELDS}
    assert ferr == terr == ""
    run_client(["ask", "--server", url, clip, QUESTION])  # so that both runs below find the answer in the cache
    (fc, _, fout, ferr), (tc, _, tout, terr) = both(["ask", "--server", url, clip, QUESTION])
    assert fc == tc == 0 and fout == tout == f"{ANSWER}\n"
    strip = lambda text: [line for line in text.splitlines() if not any(c.isdigit() for c in line)]
    assert strip(ferr) == strip(terr) and len(ferr.splitlines()) == len(terr.splitlines())
    nope = str(tmp_path / "nope.mp4")
    for args, code in ((["ask", nope, QUESTION, "--server", url], 3),
                       (["ask", clip, QUESTION, "--server", url, "--model", "llava-ov-7b"], 2),
                       (["ask", nope, QUESTION, "--server", url, "--model", "llava-ov-7b"], 2),  # the model first
                       (["ask", clip, QUESTION, "--server", "http://127.0.0.1:9", "--json"], 9),
                       (["ask", clip, QUESTION, "--server", url, "--ratio", "2"], 2),
                       (["ask", clip, QUESTION, "--server", url, "--frames", "0"], 2)):
        (fc, _, fout, ferr), (tc, _, tout, terr) = both(args)
        assert (fc, fout, ferr) == (tc, tout, terr) and fc == code and ferr.startswith("error: "), args


def test_ask_server_sends_one_request(url, folder, monkeypatch, capsys):
    """--model goes with the question: one round trip (no GET /v1/models before it); the server refuses a model it
    does not serve and the error is the one of a local check; another name of the served model is accepted."""
    from fastvid_cli import client as client_module
    from fastvid_cli.cli_ask_server import run

    sent = []
    real_open = client_module.Client._open

    def recording_open(self, method, path, *a, **kw):
        sent.append((method, path))
        return real_open(self, method, path, *a, **kw)

    monkeypatch.setattr(client_module.Client, "_open", recording_open)
    clip = str(folder / "demo.mp4")
    assert run(["ask", clip, QUESTION, "--server", url, "--model", "demo", "-q"]) == 0
    assert capsys.readouterr().out == f"{ANSWER}\n" and sent == [("POST", "/v1/chat/completions")]
    sent.clear()
    assert run(["ask", clip, QUESTION, "--server", url, "--model", "llava-ov-7b", "-q"]) == 2
    assert "--model llava-ov-7b: the server at " in capsys.readouterr().err
    assert sent == [("POST", "/v1/chat/completions"), ("GET", "/v1/models")]  # the card only for the message
    sent.clear()
    from fastvid_cli.models import resolve_model

    other_name = os.path.relpath(resolve_model("demo").source)  # the served folder, as this process names it
    assert run(["ask", clip, QUESTION, "--server", url, "--model", other_name, "-q"]) == 0
    assert capsys.readouterr().out == f"{ANSWER}\n"
    assert sent == [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")]


def test_compare_server(runner, url, folder):
    clip = str(folder / "demo.mp4")
    args = ["compare", clip, QUESTION, "-r", "0.5", "--repeat", "1", "--json"]
    local = json.loads(run(runner, [*args, *LOCAL]).stdout)
    res = run(runner, [*args, "--server", url])
    assert res.exit_code == 0, res.stderr
    remote = json.loads(res.stdout)
    assert set(remote) == set(local) and remote["video"] == clip
    assert [(r["method"], r["ratio"], r["video_tokens_kept"], r["answer"]) for r in remote["rows"]] == \
           [(r["method"], r["ratio"], r["video_tokens_kept"], r["answer"]) for r in local["rows"]]
    table = run(runner, [*args[:-1], "--server", url])
    assert table.exit_code == 0 and "fastvid" in table.stdout and "0.5" in table.stdout


def test_compare_server_with_method_options(runner, url, folder):
    clip = str(folder / "demo.mp4")
    args = ["compare", clip, QUESTION, "-r", "0.3", "--repeat", "1", "--no-baseline", "--method", "fastvid",
            "--method", "random", "--dyseg-tau", "0.5", "--random-seed", "3", "--json"]
    local = json.loads(run(runner, [*args, *LOCAL]).stdout)
    res = run(runner, [*args, "--server", url])
    assert res.exit_code == 0, res.stderr
    remote = json.loads(res.stdout)
    assert [(r["method"], r["video_tokens_kept"], r["answer"]) for r in remote["rows"]] == \
           [(r["method"], r["video_tokens_kept"], r["answer"]) for r in local["rows"]]


def test_batch_server_writes_the_records_of_a_local_run(runner, url, folder, tmp_path):
    csv = tmp_path / "q.csv"
    csv.write_text("id,video,question\n"
                   f"a,{folder / 'demo.mp4'},{QUESTION}\n"
                   f"b,{folder / 'demo.mp4'},What colour is the circle? Answer in a single word.\n"
                   "c,missing.mp4,Where?\n"
                   f"d,{folder / 'demo.mp4'},How many shapes are there?\n")
    local = run(runner, ["batch", str(csv), "-o", str(tmp_path / "local.jsonl"), *LOCAL, "--max-new-tokens", "8"])
    remote = run(runner, ["batch", str(csv), "-o", str(tmp_path / "remote.jsonl"), "--server", url,
                          "--max-new-tokens", "8"])
    assert local.exit_code == remote.exit_code == 8, remote.stderr  # row c failed in both
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]
    lrec, rrec = read(tmp_path / "local.jsonl"), read(tmp_path / "remote.jsonl")
    same = ("id", "status", "error", "answer", "fingerprint", "video", "video_tokens_kept", "model", "settings")
    assert [{k: r.get(k) for k in same} for r in lrec] == [{k: r.get(k) for k in same} for r in rrec]
    again = run(runner, ["batch", str(csv), "-o", str(tmp_path / "local.jsonl"), "--server", url,
                         "--max-new-tokens", "8"])
    assert "4 already answered" in again.stderr  # resume across local and remote runs: same fingerprints


def test_eval_server(runner, url, folder, tmp_path):
    bench = tmp_path / "bench.jsonl"
    lines = [{"id": "q1", "video": str(folder / "demo.mp4"), "question": "What colour is the circle?",
              "options": ["red", "blue", "green", "yellow"], "answer": "B"},
             {"id": "q2", "video": str(folder / "demo.mp4"), "question": "Which shape is blue?",
              "options": ["square", "diamond", "circle", "triangle"], "answer": "C"}]
    bench.write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = ["eval", str(bench), "-r", "0.25", "--json"]
    local = run(runner, [*args, *LOCAL, "-o", str(tmp_path / "l.jsonl")])
    remote = run(runner, [*args, "--server", url, "-o", str(tmp_path / "r.jsonl")])
    assert local.exit_code == remote.exit_code == 0, remote.stderr
    pick = lambda d: [(s["setting"], s["correct"], s["n"]) for s in d["settings"]]
    assert pick(json.loads(remote.stdout)) == pick(json.loads(local.stdout))
    read = lambda p: sorted((r["id"], r["setting"], r["answer"], r["fingerprint"])
                            for r in map(json.loads, p.read_text().splitlines()))
    assert read(tmp_path / "l.jsonl") == read(tmp_path / "r.jsonl")


def test_chat_through_stdin_with_a_server(runner, url, folder):
    clip = str(folder / "demo.mp4")
    lines = f"{QUESTION}\n\n/ratio 0.5\nWhat colour is the circle? Answer the question using a single word or phrase.\n"
    res = run(runner, ["chat", clip, "--server", url], input=lines)
    assert res.exit_code == 0, res.stderr
    answers = res.stdout.splitlines()
    assert len(answers) == 2 and answers[0] == ANSWER
    assert "ratio 0.5" in res.stderr and f"on {url}" in res.stderr
    assert "(fastvid r=0.1)" in res.stderr and "(fastvid r=0.5)" in res.stderr  # one summary line per answer
    js = run(runner, ["chat", clip, "--server", url, "--json"], input=f"{QUESTION}\n/video nope.mp4\nAgain?\n")
    assert js.exit_code == 3  # the /video command failed (the conversation went on with the same video)
    records = [json.loads(line) for line in js.stdout.splitlines()]
    assert records[0]["answer"] == ANSWER and records[0]["video"] == clip and len(records) == 2
    assert records[1]["prompt_tokens_kept"] > records[0]["prompt_tokens_kept"]  # a follow-up: the history is in


def test_chat_through_stdin_locally(runner, tiny_llava, tiny_saliency, index_video):
    args = ["--model", str(tiny_llava), "--saliency-model", str(tiny_saliency), "--device", "cpu", "--frames", "8",
            "--max-new-tokens", "5", "--no-cache"]
    asked = run(runner, ["ask", str(index_video), "What happens?", *args, "--json"])
    res = run(runner, ["chat", str(index_video), *args, "--json"], input="What happens?\nAnd then?\n/quit\nNever.\n")
    assert res.exit_code == 0, res.stderr
    first, second = [json.loads(line) for line in res.stdout.splitlines()]
    assert first["answer"] == json.loads(asked.stdout)["answer"]  # a conversation's first answer is `ask`'s
    assert second["question"] == "And then?" and second["prompt_tokens_kept"] > first["prompt_tokens_kept"]
    assert second["timings_ms"].get("prefix_prefill", 0) > 0
    time.sleep(0)


def test_the_fast_path_exits_with_os_exit_after_its_output(url, folder):
    """`python -m fastvid_cli ask … --server` as users run it (os._exit after flushing, __main__._exit): the whole
    output and the exit code are there, also for a server that cannot be reached."""
    clip = str(folder / "demo.mp4")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for extra in (["-q"], ["--json"], []):
        res = subprocess.run([sys.executable, "-m", "fastvid_cli", "ask", clip, QUESTION, "--server", url, *extra],
                             capture_output=True, text=True, timeout=120, env=env)
        assert res.returncode == 0 and res.stdout.startswith((f"{ANSWER}\n", f'{{"answer": "{ANSWER}"')), res.stderr
        assert res.stdout.endswith("\n") and (extra != [] or "fastvid" in res.stderr)
    res = subprocess.run([sys.executable, "-m", "fastvid_cli", "ask", clip, QUESTION, "--server", "http://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 9 and res.stderr.startswith("error: cannot reach the fastvid server at http://127.0.0.1:9")


# ---------------------------------------------------------------------------------------------- --select
# The demo model ships its own selector: a local run and the server (started without --selector) both score with it.
SELECT = ["--select", "8", "--max-new-tokens", "4"]


def chosen(record: dict) -> tuple:
    """What a selection decided: K of M, the selector, the chosen times and their scores."""
    sel = record["selection"]
    return sel["k"], sel["candidates"], sel["selector"], sel["timestamps"], sel["scores"]


def test_ask_server_selects_the_frames_a_local_ask_selects(runner, url, folder):
    clip = str(folder / "demo.mp4")
    local = run(runner, ["ask", clip, QUESTION, *LOCAL, *SELECT, "--json"])
    remote = run(runner, ["ask", clip, QUESTION, "--server", url, *SELECT, "--json"])
    assert local.exit_code == remote.exit_code == 0, remote.stderr
    lj, rj = json.loads(local.stdout), json.loads(remote.stdout)
    assert rj["answer"] == lj["answer"] and rj["frames"] == lj["frames"] == 8
    assert chosen(rj) == chosen(lj) and rj["frame_timestamps"] == lj["frame_timestamps"]
    assert {k: v for k, v in rj.items() if k not in RUN_FIELDS | {"selection"}} == \
           {k: v for k, v in lj.items() if k not in RUN_FIELDS | {"selection"}}
    # the panel has the same rows, the chosen frames among them
    plain_local = run(runner, ["ask", clip, QUESTION, *LOCAL, *SELECT])
    plain_remote = run(runner, ["ask", clip, QUESTION, "--server", url, *SELECT])
    assert plain_remote.stdout == plain_local.stdout
    row = lambda text: next(line for line in text.splitlines() if "t (score)" in line)
    assert row(plain_remote.stderr) == row(plain_local.stderr)
    # --candidates goes too; --select with --frames is refused before any request, as locally
    more = run(runner, ["ask", clip, QUESTION, "--server", url, *SELECT, "--candidates", "16", "--json"])
    assert more.exit_code == 0 and json.loads(more.stdout)["selection"]["candidates"] == 16, more.stderr
    both = run(runner, ["ask", clip, QUESTION, "--server", url, *SELECT, "--frames", "8"])
    assert both.exit_code == 2 and "excludes --frames" in both.stderr


def test_selector_with_server_must_be_the_servers(runner, url, folder):
    """The server scores with its own selector (a path on the server): another --selector is a usage error, its
    own is accepted."""
    clip = str(folder / "demo.mp4")
    wrong = run(runner, ["ask", clip, QUESTION, "--server", url, *SELECT, "--selector", "google/siglip-base"])
    assert wrong.exit_code == 2 and "Traceback" not in wrong.stderr
    served = json.loads(run(runner, ["ask", clip, QUESTION, "--server", url, *SELECT, "--json"]).stdout)
    (line,) = [ln for ln in wrong.stderr.splitlines() if ln.startswith("error")]
    assert line.startswith(f"error: --selector google/siglip-base: the server at {url} selects frames with "
                           f"{served['selection']['selector']} (leave --selector out")
    same = run(runner, ["ask", clip, QUESTION, "--server", url, *SELECT, "--selector", "demo", "--json"])
    assert same.exit_code == 0, same.stderr
    for command in (["chat", clip], ["compare", clip, QUESTION, "--repeat", "1"]):
        res = run(runner, [*command, "--server", url, "--select", "4", "--selector", "google/siglip-base"],
                  input="What?\n")
        assert res.exit_code == 2 and "--selector google/siglip-base" in res.stderr, command


def test_the_fast_path_sends_select_as_the_typer_command_does(url, folder):
    clip = str(folder / "demo.mp4")
    args = ["ask", clip, QUESTION, "--server", url, *SELECT, "--candidates", "12", "--json"]  # demo.mp4: 16 frames
    (fc, fmods, fout, ferr), (tc, _, tout, terr) = run_client(args), run_client(args, "cli", "_invoke")
    assert fc == tc == 0 and ferr == terr == ""
    fast, typed = json.loads(fout), json.loads(tout)
    assert chosen(fast) == chosen(typed) and fast["answer"] == typed["answer"] and fast["selection"]["candidates"] == 12
    assert not fmods & (HEAVY | {"typer", "click", "pydantic", "rich"}), sorted(fmods)
    # values it cannot take are the typer command's to refuse, in the same words
    for bad in (["--select", "0"], ["--candidates", "4"], ["--select", "8", "--candidates", "4"],
                ["--select", "8", "--fps", "1"]):
        args = ["ask", clip, QUESTION, "--server", url, *bad]
        (fc, _, fout, ferr), (tc, _, tout, terr) = run_client(args), run_client(args, "cli", "_invoke")
        assert (fc, fout, ferr) == (tc, tout, terr) and fc == 2 and ferr.startswith("error: "), bad


def test_eval_server_select_records_the_frames_of_a_local_run(runner, url, folder, tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"id": "q1", "video": str(folder / "demo.mp4"),
                                 "question": "What colour is the circle?",
                                 "options": ["red", "blue", "green", "yellow"], "answer": "B"}) + "\n")
    args = ["eval", str(bench), "-r", "0.25", "--select", "8", "--no-reference", "--json"]
    local = run(runner, [*args, *LOCAL, "-o", str(tmp_path / "l.jsonl")])
    remote = run(runner, [*args, "--server", url, "-o", str(tmp_path / "r.jsonl")])
    assert local.exit_code == remote.exit_code == 0, remote.stderr
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]
    (lrec,), (rrec,) = read(tmp_path / "l.jsonl"), read(tmp_path / "r.jsonl")
    for key in ("answer", "fingerprint", "settings", "frames_used", "status"):
        assert lrec[key] == rrec[key], key
    assert rrec["settings"]["select"]["k"] == 8 and chosen(rrec) == chosen(lrec)
    assert set(rrec["selection"]) == set(lrec["selection"])
    again = run(runner, [*args, "--server", url, "-o", str(tmp_path / "l.jsonl")])  # resume across local/remote
    assert json.loads(again.stdout)["run"]["skipped"] == 1


def test_batch_server_select_writes_the_records_of_a_local_run(runner, url, folder, tmp_path):
    csv = tmp_path / "q.csv"
    csv.write_text(f"id,video,question\na,{folder / 'demo.mp4'},{QUESTION}\n"
                   f"b,{folder / 'demo.mp4'},What colour is the circle? Answer in a single word.\n")
    args = ["batch", str(csv), "--select", "4", "--max-new-tokens", "4"]
    local = run(runner, [*args, *LOCAL, "-o", str(tmp_path / "l.jsonl")])
    remote = run(runner, [*args, "--server", url, "-o", str(tmp_path / "r.jsonl")])
    assert local.exit_code == remote.exit_code == 0, remote.stderr
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]
    same = ("id", "status", "answer", "fingerprint", "frames", "frame_timestamps", "settings")
    lrec, rrec = read(tmp_path / "l.jsonl"), read(tmp_path / "r.jsonl")
    assert [{k: r.get(k) for k in same} for r in lrec] == [{k: r.get(k) for k in same} for r in rrec]
    assert [chosen(r) for r in lrec] == [chosen(r) for r in rrec] and rrec[0]["settings"]["select"]["k"] == 4


def test_chat_select_through_stdin_with_a_server(runner, url, folder):
    clip = str(folder / "demo.mp4")
    lines = f"{QUESTION}\nWhat colour is the circle? Answer the question using a single word or phrase.\n"
    local = run(runner, ["chat", clip, *LOCAL, "--select", "4", "--max-new-tokens", "4", "--json"], input=lines)
    remote = run(runner, ["chat", clip, "--server", url, "--select", "4", "--max-new-tokens", "4", "--json"],
                 input=lines)
    assert local.exit_code == remote.exit_code == 0, remote.stderr
    la, ra = ([json.loads(x) for x in res.stdout.splitlines()] for res in (local, remote))
    assert len(ra) == len(la) == 2 and [a["answer"] for a in ra] == [a["answer"] for a in la]
    assert [chosen(a) for a in ra] == [chosen(a) for a in la]
    assert chosen(ra[0]) == chosen(ra[1])  # a follow-up keeps the opening question's frames


def test_compare_server_select_chooses_the_frames_of_a_local_run(runner, url, folder):
    clip = str(folder / "demo.mp4")
    args = ["compare", clip, QUESTION, "-r", "0.5", "--repeat", "1", "--no-baseline", "--select", "8",
            "--max-new-tokens", "4"]
    local = run(runner, [*args, *LOCAL, "--json"])
    remote = run(runner, [*args, "--server", url, "--json"])
    assert local.exit_code == remote.exit_code == 0, remote.stderr
    lj, rj = json.loads(local.stdout), json.loads(remote.stdout)
    assert chosen(rj) == chosen(lj)
    assert [(r["method"], r["ratio"], r["video_tokens_kept"], r["answer"]) for r in rj["rows"]] == \
           [(r["method"], r["ratio"], r["video_tokens_kept"], r["answer"]) for r in lj["rows"]]
    table = run(runner, [*args, "--server", url])
    assert table.exit_code == 0 and "frames chosen for the question: 8 of 16" in table.stderr, table.stderr
