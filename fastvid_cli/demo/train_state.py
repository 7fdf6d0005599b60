"""A demo training run split over calls (a device call lasts at most 10 minutes): what `train.fit` writes at the
end of a call with --state and reads back with --resume.

The state: every trained module in fp16 (as the shipped weights; the rounding is smaller than one update), Adam's
second moments in bf16 and not its first moments (they rebuild within ~10 steps at beta1 0.9) — so the default
recipe's state is ~34 MB and travels to the device beside the work tree under its 64 MiB limit — the progress
(step, phase steps, where the joint phase began, seconds trained, the log) and the recipe's shape arguments, which a
resumed call must repeat."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

# arguments that shape the modules, the data or the schedule: a resumed call (--resume) must repeat them. Not
# --minutes: a resumed run may get a new whole budget (the phases and schedules then go on from the share of the new
# budget already spent: a shorter one moves the LR and the token-drop start forward at once).
RECIPE_SHAPE = ("seed", "max_steps", "batch", "questions", "frames", "text_layers", "lr", "vision_share")
PROGRESS = ("log", "step", "joint_from", "phase_steps", "seconds")


def load(args) -> dict:
    """The state at args.resume, checked against this call's recipe (ValueError, one line: an unreadable file, not a
    state, or the first recipe argument that differs)."""
    try:
        state = torch.load(args.resume, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as e:
        raise ValueError(f"--resume {args.resume}: cannot read a training state there "
                         f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    if not isinstance(state, dict) or not {"args", "opt", *PROGRESS} <= state.keys():
        raise ValueError(f"--resume {args.resume}: not a training state written by --state")
    for name in RECIPE_SHAPE:
        if state["args"][name] != getattr(args, name):
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)} does not match the resumed run's "
                             f"{state['args'][name]}")
    return state


def restore(state: dict, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
            new_heads: tuple[str, ...] = ("vision_aux", "llm_aux")) -> dict:
    """Load the modules and the optimizer from `state`; returns its progress (PROGRESS keys) and, under "new", the
    parameters the state predates. Only auxiliary heads may be new (modules named in `new_heads`, added last in
    their ModuleDict, so that their parameters come last in their optimizer group): they start from their fresh
    initialisation and an empty optimizer state; anything else missing, or anything unexpected, is an error."""
    new = []
    for name, module in modules.items():
        got = module.load_state_dict(state[name], strict=name not in new_heads)
        if got.unexpected_keys:
            raise ValueError(f"the resumed state has {name} parameters this recipe lacks: {got.unexpected_keys}")
        new += [f"{name}.{key}" for key in got.missing_keys]
    opt.load_state_dict(_widened(state["opt"], opt))  # the moments come back in the parameters' dtype (fp32)
    for group in opt.param_groups:
        for param in group["params"]:
            if opt.state[param]:  # a trained parameter: its first moment starts again from zero
                opt.state[param].setdefault("exp_avg", torch.zeros_like(param))
    return {**{name: state[name] for name in PROGRESS}, "new": new}


def _widened(saved: dict, opt: torch.optim.Optimizer) -> dict:
    """An optimizer state dict saved before new heads were added, renumbered for this optimizer: each group's
    saved parameters first, the new ones (at the end of their group) with no state yet."""
    if [len(g["params"]) for g in saved["param_groups"]] == [len(g["params"]) for g in opt.param_groups]:
        return saved
    state, groups, nid = {}, [], 0
    for old, now in zip(saved["param_groups"], opt.param_groups, strict=True):
        if len(old["params"]) > len(now["params"]):
            raise ValueError("the resumed state has more parameters than this recipe")
        ids = []
        for j in range(len(now["params"])):
            if j < len(old["params"]) and old["params"][j] in saved["state"]:
                state[nid] = saved["state"][old["params"][j]]
            ids.append(nid)
            nid += 1
        groups.append({**old, "params": ids})
    return {"state": state, "param_groups": groups}


def save(path: str | Path, args, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
         progress: dict) -> Path:
    """Write the state (atomically: never a half-written file where a good one was)."""
    opt_state = opt.state_dict()  # its per-parameter dicts are the live ones: copied, not changed in place
    opt_state["state"] = {i: {k: v.to("cpu", torch.bfloat16) if v.is_floating_point() and k != "step" else v.cpu()
                              for k, v in per_param.items() if k != "exp_avg"}
                          for i, per_param in opt_state["state"].items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict({n: {k: v.detach().half().cpu() if v.is_floating_point() else v.cpu()
                         for k, v in m.state_dict().items()} for n, m in modules.items()},
                    opt=opt_state, args={n: getattr(args, n) for n in RECIPE_SHAPE}, **progress), tmp)
    tmp.replace(path)
    return path
