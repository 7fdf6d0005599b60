"""Command-line options shared by `ask`, `compare` and `batch`: one definition, one help text, one default; and
the command class every command uses, so that all help screens read alike (see `Command`).

Typer reads these OptionInfo objects as parameter defaults and never mutates them, so one instance can serve
several commands. Like cli.py, this module imports no torch.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from fastvid_cli.models import DEFAULT_MODEL
from fastvid_cli import pruning

# Option groups of the help screens, in this order in every command. "Input" holds what only one command reads
# (eval's benchmark options); --help and --debug close the "Output" group.
PANELS = ("Input", "Server", "Model", "Video", "Pruning", "Generation", "Output")

# 1-3 runnable examples per command, printed at the end of its --help: one command per line, an indented line
# continues the one before. Every line fits 80 columns.
EXAMPLES: dict[str | None, list[str]] = {
    "ask": ['fastvid ask examples/demo.mp4 "What colour is the square?" --model demo',
            'fastvid ask clip.mp4 "What happens in this video?" --ratio 0.1 --baseline',
            'fastvid ask clip.mp4 "Describe the video." --json > answer.json'],
    "compare": ['fastvid compare examples/demo.mp4 "What colour is the square?" --model demo',
                'fastvid compare clip.mp4 "What happens?" -r 0.25 -r 0.1 --method holitom'],
    "batch": ["fastvid batch questions.csv -o answers.jsonl --csv-out answers.csv",
              "fastvid batch questions.csv --model demo --ratio 0.25 --retry-errors"],
    "eval": ["mkdir -p /tmp/synth-videos",
             "fastvid eval fastvid_cli/data/synth_test.jsonl --model demo --limit 20 \\",
             "    --videos-root /tmp/synth-videos --method fastvid --method uniform"],
    "serve": ["fastvid serve --model demo --port 8000",
              "fastvid serve --model llava-ov-7b --host 0.0.0.0 --api-key \"$KEY\" \\",
              "    --allowed-media-dir /data/videos"],
    "chat": ["fastvid chat examples/demo.mp4 --model demo",
             "fastvid chat clip.mp4 --server http://127.0.0.1:8000",
             'printf "What colour?\\nWhat shape?\\n" | fastvid chat clip.mp4 --server URL'],
    "find": ['fastvid find clip.mp4 "a red square" --selector demo',
             'fastvid find a.mp4 b.mp4 c.mp4 "a dog jumps into a pool" --top 3 --json'],
    "models": ["fastvid models", "fastvid models --json"],
    "doctor": ["fastvid doctor", "fastvid doctor --json"],
    None: ['fastvid ask clip.mp4 "What happens in this video?"',
           'fastvid compare clip.mp4 "What happens?" -r 0.5 -r 0.1',
           "fastvid doctor"],
}


def examples_epilog(command: str | None) -> str:
    """The "Examples" block of a help screen, in rich markup. Each command starts with a dim "$", which also keeps
    typer's dedent of the epilog from stripping the indentation of continuation lines."""
    lines = [line if line.startswith(" ") else f"[dim]$[/] {line}" for line in EXAMPLES[command]]
    return "[bold]Examples[/]\n" + "\n".join(lines)


def _paragraphs(text: str | None) -> str | None:
    """Each paragraph of a docstring on one line: typer's rich mode keeps the line breaks of every paragraph after
    the first, so sentences wrapped in the source broke mid-line on the screen."""
    if not text:
        return text
    paras = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paras)


def _panel_rank(param: Any) -> int:
    if isinstance(param, TyperArgument):
        return -1  # arguments first, in their own order (they are positional)
    panel = getattr(param, "rich_help_panel", None) or "Output"
    return PANELS.index(panel) if panel in PANELS else len(PANELS)


def _no_placeholders(params: list[Any]) -> None:
    """Flags take no value: show none (typer shows <bool>). Every option that takes one declares its metavar. An
    argument taking several values shows its element type ("<path>...", where typer shows <list[Path]>)."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
        if isinstance(p, TyperArgument) and p.nargs != 1:
            element = (typing.get_args(getattr(getattr(p, "type_descriptor", None), "annotation", None)) or [None])[0]
            name = getattr(element, "__name__", "value").lower()
            p.display_type_rich = lambda ctx, name=name: f"<{name}>..."


class Command(TyperCommand):
    """A command whose help reads the same in every command: docstring paragraphs re-flowed to the terminal,
    options grouped in the PANELS order (--help last, in "Output"), no placeholder on flags, and its EXAMPLES at
    the end."""

    def __init__(self, name: str | None, **kw: Any) -> None:
        kw["help"] = _paragraphs(kw.get("help"))
        if not kw.get("epilog") and name in EXAMPLES:
            kw["epilog"] = examples_epilog(name)
        super().__init__(name, **kw)
        _no_placeholders(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            _no_placeholders([option])
            option.rich_help_panel = "Output"
        return option

    def get_params(self, ctx: Any) -> list[Any]:
        return sorted(super().get_params(ctx), key=_panel_rank)  # stable: arguments keep their order


class Group(TyperGroup):
    """The `fastvid` group: no placeholder on its flags either."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        _no_placeholders(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            _no_placeholders([option])
        return option


MODEL_HELP = "Alias (see `fastvid models`), hub id (org/name) or local checkpoint folder."

MODEL = typer.Option(DEFAULT_MODEL, "--model", "-m", metavar="MODEL", help=MODEL_HELP, rich_help_panel="Model")
DEVICE = typer.Option("auto", "--device", metavar="DEVICE",
                      help="auto | cuda | cuda:N | cpu. auto shards a model too big for one GPU across all GPUs "
                           "(accelerate device_map).", rich_help_panel="Model")
DTYPE = typer.Option("auto", "--dtype", metavar="DTYPE",
                     help="auto | bfloat16 | float16 | float32 (auto: bf16 on GPU, fp32 on CPU).",
                     rich_help_panel="Model")
ATTN = typer.Option("sdpa", metavar="IMPL", help="sdpa | eager | flash_attention_2.", rich_help_panel="Model")
SALIENCY = typer.Option(
    None, metavar="SOURCE",
    help="SigLIP checkpoint (hub id, folder or .safetensors) whose attention-pooling head gives FastVID's saliency; "
         "default google/siglip-so400m-patch14-384, falling back (with a warning) to last-layer attention when "
         "unavailable. 'fallback' forces the fallback.", rich_help_panel="Model")
THREADS = typer.Option(None, "--threads", min=1, metavar="N",
                       help="CPU threads for torch's work (default: one per core for the model, one for pruning; "
                            "OMP_NUM_THREADS sets it too).", rich_help_panel="Model")
OFFLINE = typer.Option(False, "--offline", help="Never touch the network (same as HF_HUB_OFFLINE=1).",
                       rich_help_panel="Model")

FRAMES = typer.Option(None, "--frames", "-n", min=1, max=4096, metavar="N",
                      help="Frames to sample uniformly (default: the model's, 32 for LLaVA-OV; Qwen-VL models sample "
                           "by --fps unless this is given, rounded to an even count).",
                      rich_help_panel="Video")
FPS = typer.Option(None, "--fps", min=0.0, metavar="FPS",
                   help="Qwen-VL models: frames per second to sample (default 2), at least 4 and at most 768 frames, "
                        "an even count; exclusive with --frames.", rich_help_panel="Video")
CACHE_DIR = typer.Option(None, metavar="DIR",
                         help="Where sampled-and-encoded video features, and the frame scores of --select and "
                              "find, are cached (default: ~/.cache/fastvid/features, or $FASTVID_CACHE/features).",
                         rich_help_panel="Video")
NO_CACHE = typer.Option(False, "--no-cache", help="Do not read or write the feature cache.", rich_help_panel="Video")
DECODER = typer.Option("auto", "--decoder", metavar="DECODER",
                       help="cpu | gpu | auto: decode the frames with FFmpeg on the CPU, or with NVDEC on the GPU "
                            "(frames stay in GPU memory; a clip NVDEC cannot decode falls back to the CPU, with a "
                            "note). auto: the CPU (NVDEC measured 3-4x slower on an H100 host).",
                       rich_help_panel="Video")

METHOD = typer.Option(pruning.DEFAULT_METHOD, "--method", metavar="METHOD",
                      help="Pruning method: " + " | ".join(f"{s.name} ({s.summary})" if s.summary else s.name
                                                           for s in pruning.REGISTRY.values()) + ".",
                      rich_help_panel="Pruning")
METHODS_HELP = " | ".join(pruning.method_names()) + f"; repeat for several (default {pruning.DEFAULT_METHOD})."
RATIO = typer.Option(None, "--ratio", "-r", metavar="RATIO",
                     help="Retention ratio in (0, 1]; 1.0 keeps every token (default: the model's, 0.10 for "
                          "LLaVA-OV).", rich_help_panel="Pruning")

MAX_NEW_TOKENS = typer.Option(512, min=1, metavar="N", help="Most tokens to generate.",
                              rich_help_panel="Generation")
TEMPERATURE = typer.Option(0.0, min=0.0, metavar="T", help="0 = greedy.", rich_help_panel="Generation")
TOP_P = typer.Option(1.0, min=0.0, max=1.0, metavar="P", help="Nucleus sampling (with --temperature > 0).",
                     rich_help_panel="Generation")
SEED = typer.Option(None, metavar="N", help="Seed for sampling (each answer starts from it).",
                    rich_help_panel="Generation")
SYSTEM = typer.Option(None, metavar="TEXT", help="System prompt.", rich_help_panel="Generation")
COMPILE = typer.Option(None, "--compile/--no-compile",
                       help="Decode on a static KV cache with each step replayed as one CUDA graph (captured once "
                            "per buffer size, well under a second; greedy tokens as the eager loop). Default: on "
                            "when running on CUDA.", rich_help_panel="Generation")

DEBUG = typer.Option(False, "--debug", help="Show tracebacks.", rich_help_panel="Output")

SERVER = typer.Option(None, "--server", envvar="FASTVID_SERVER", metavar="URL", show_envvar=True,
                      help="Send the work to a running `fastvid serve` (e.g. http://127.0.0.1:8000) instead of "
                           "loading the model here; the output is the same. An empty value runs locally.",
                      rich_help_panel="Server")
API_KEY = typer.Option(None, "--api-key", envvar="FASTVID_API_KEY", metavar="KEY", show_envvar=True,
                       help="The server's API key (with --server).", rich_help_panel="Server")

def method_options(after: str) -> Callable[[Callable], Callable]:
    """Give a command one option per method parameter of the pruning registry (pruning.options: --dyseg-tau,
    --holitom-inner, …), in its signature right after the parameter `after` (so in the "Pruning" group, in that
    place). The command takes them as `**method_options` and reads them with `pruning.given_options`, so a method
    added to the registry brings its options to every command with nothing else to change."""

    def add(command: Callable) -> Callable:
        sig = inspect.signature(command, eval_str=True)
        params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        at = [p.name for p in params].index(after) + 1
        added = []
        for param in pruning.options():
            info = typer.Option(None, param.flag, min=param.min, max=param.max, metavar=param.metavar,
                                help=pruning.option_help(param), rich_help_panel="Pruning")
            added.append(inspect.Parameter(param.dest, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=info,
                                           annotation=Optional[param.type]))
        clash = {p.name for p in added} & {p.name for p in params}
        if clash:  # a method option would shadow one of the command's own
            raise TypeError(f"{command.__name__}: method options {sorted(clash)} clash with its parameters")
        command.__signature__ = sig.replace(parameters=params[:at] + added + params[at:])
        command.__annotations__ = {**command.__annotations__, **{p.name: p.annotation for p in added}}
        return command

    return add


# ---------------------------------------------------------------------------------------------- --select
# Declared once, added to every command that answers questions (ask, compare, batch, eval, chat, serve) by
# `select_options`; the command reads them with settings.select_options(select, candidates, selector).
SELECT_OPTIONS: list[tuple[str, Any, type]] = [
    ("select", typer.Option(None, "--select", metavar="K",
                            help="Choose K frames for the question instead of sampling uniformly: sample M "
                                 "candidate frames, score each against the question with a text-image model "
                                 "(--selector), keep K by BOLT's inverse transform sampling (relevance and "
                                 "coverage; see README 'Frame selection'). Excludes --frames/--fps.",
                            rich_help_panel="Video"), Optional[int]),
    ("candidates", typer.Option(None, "--candidates", metavar="M",
                                help="Candidate frames to score for --select (default: 4*K, or one per second "
                                     "of video when that is more, at most 256).", rich_help_panel="Video"),
     Optional[int]),
    ("selector", typer.Option(None, "--selector", metavar="MODEL",
                              help="Text-image model that scores frames for --select: hub id or folder of a SigLIP "
                                   "checkpoint, or 'demo' (default: the model's own selector if it has one, as the "
                                   "demo does, else google/siglip-so400m-patch14-384).", rich_help_panel="Video"),
     Optional[str]),
]


def select_options(after: str) -> Callable[[Callable], Callable]:
    """Give a command the --select, --candidates and --selector options (SELECT_OPTIONS), in its signature right
    after the parameter `after`."""

    def add(command: Callable) -> Callable:
        sig = inspect.signature(command, eval_str=True)
        params = list(sig.parameters.values())
        at = [p.name for p in params].index(after) + 1
        added = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=info, annotation=ann)
                 for name, info, ann in SELECT_OPTIONS]
        clash = {p.name for p in added} & {p.name for p in params}
        if clash:
            raise TypeError(f"{command.__name__}: select options {sorted(clash)} clash with its parameters")
        command.__signature__ = sig.replace(parameters=params[:at] + added + params[at:])
        command.__annotations__ = {**command.__annotations__, **{p.name: p.annotation for p in added}}
        return command

    return add
