"""Train the demo model on the synthetic shapes benchmark (GPU; a fixed seed; logs loss and accuracy).

    python -m fastvid_cli.demo.train --out fastvid_cli/demo/weights --minutes 8

A bad --resume (unreadable, not a state, another recipe) is one line on stderr and exit status 1.

What is trained, end to end: SigLIP-style tower, projector, Qwen2 LLM (answer cross-entropy on the benchmark's
multiple-choice and short-answer prompts, exactly the prompts `fastvid eval` uses), plus the attention-pooling
saliency head with an auxiliary task: from each frame's pooled vector, predict which palette colours are visible in
that frame. To answer it the probe must attend to the shapes, which is what makes FastVID's saliency meaningful for
this model. Late in training some batches keep only part of the video tokens (cells with an object kept first, as a
saliency-based pruner would), half of them at their original positions (FastVID's layout), half renumbered
contiguously (the layout HoliTom's, VidCom2's and FlashVID's reference code gives LLaVA: a model that never saw it
answered 30-50 points lower with those methods, benchmarks/RESULTS.md), so the model has seen reduced token sets in
both layouts; no pruning method is used in training, so none is favoured.

Two phases (issue #18: a single joint phase left shape, motion and order questions at chance):
  1. vision (the first --vision-share of the budget): the tower alone, on every frame of the batch, with dense
     per-patch targets: the shape and the colour of the object covering most of the patch (an edge patch is labelled
     with the object whose edge it shows), and the saliency head's colour presence. A step costs only the tower, so
     this phase gives the tower many large-batch updates before the LLM sees it. The tower's layers start as the
     identity (`zero_residual`), which learnt per-patch shapes faster than the default init.
  2. joint: tower (at --vision-lr-scale of the LR, its dense targets kept), projector and LLM. The LLM runs the
     chat prefix + video ONCE per clip and the clip's k question rows on top of that key/value cache (the video
     part of k rows is identical under causal attention), so a clip costs one video pass + k short suffixes.
     Dense causal targets on every video token at the LLM's middle layer (read from the clip description; all of
     them can be known from the frames up to the token's own, so causal attention can compute them):
       the token's own place (column, row) on its frame's grid;
       shape and colour of the object covering the cell;
       motion so far: static, or the direction of its displacement since it first appeared;
       appearance rank: 1 for the object that appears first, 2 for the next, ... (the order questions);
       newest: whether no object has appeared after it yet (the last-to-appear question).
     The answer loss weighs the first answer token (the one that decides the answer) fully and the rest of the
     answer by --rest-weight.

Each clip is rendered once and asked k of its questions, chosen by TYPE_WEIGHT; besides the generator's questions,
training clips also get the order questions (first / last appears, by shape and by colour) whenever the benchmark's
own checker (`synth.check`) accepts them on that clip.

Training clips come from seeds 0 .. train_data.SEED_END-1 (the test split uses 1_000_000 on and the example search 2_000_000
on, never seen here). Labels are the generator's own (or accepted by its checker); the test split is not touched.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastvid_cli import demo
from fastvid_cli.demo import train_state
from fastvid_cli.demo.train_data import (
    CELL_TARGETS, MAX_RANK, MOTIONS, Clips, PromptIds, _palette)
from fastvid_cli.models.siglip_head import OWN_HEAD_FILE, write_head

MEAN = STD = 0.5


@dataclass
class Trained:
    """What `fit` returns: the model (its vision side is `model.model.vision_tower` + `multi_modal_projector`), the
    tokenizer, the saliency head and its config, and the training log."""

    model: torch.nn.Module
    tok: object
    head: torch.nn.Module
    head_cfg: dict
    summary: dict = field(default_factory=dict)

    def vision_side(self) -> dict[str, torch.nn.Module]:
        """The trained video encoder, for a later stage (e.g. a text tower) to train against: tower, projector,
        saliency head."""
        core = self.model.model
        return dict(tower=core.vision_tower, projector=core.multi_modal_projector, head=self.head)


def _weighted_ce(logits: torch.Tensor, target: torch.Tensor, bg_weight: float) -> torch.Tensor:
    """Cross-entropy over the last dim of logits (..., C) with class 0 (background / no object) down-weighted."""
    w = torch.ones(logits.shape[-1], device=logits.device)
    w[0] = bg_weight
    return F.cross_entropy(logits.float().flatten(0, -2), target.flatten(), weight=w)


def _fg_acc(logits: torch.Tensor, target: torch.Tensor, lo: int = 1) -> torch.Tensor:
    """Accuracy on the elements whose target is >= lo (NaN when there are none; no host sync)."""
    m = target >= lo
    return ((logits.argmax(-1) == target) & m).sum() / m.sum()


def _object_first_keep(cell: torch.Tensor, keep: int, bias: float) -> torch.Tensor:
    """(B, T, N) cell targets' object id > 0 -> (B, T, keep) kept token indices per frame, increasing: cells with an
    object rank before the others by `bias` (plus uniform noise), as a saliency-based pruner keeps them."""
    score = torch.rand(cell.shape, device=cell.device) + bias * (cell > 0).float()
    return score.topk(keep, -1).indices.sort(-1).values


def kept_layout(sel: torch.Tensor, n_video: int, compact: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Kept grid tokens `sel` (B, n) of a video of n_video slots (the last one the newline, always kept) ->
    (slots (B, n+1): where each kept token comes from, positions (B, n+1): the position ids they get, where the text
    after the video starts). Original layout: every token keeps its own position and the text its place after the
    whole video (FastVID's layout); compact: the kept tokens are renumbered 0..n and the text follows them (how
    HoliTom's and VidCom2's reference code lays out LLaVA-OneVision's tokens)."""
    B, n = sel.shape
    slots = torch.cat([sel, torch.full((B, 1), n_video - 1, device=sel.device, dtype=sel.dtype)], 1)
    if not compact:
        return slots, slots, n_video
    return slots, torch.arange(n + 1, device=sel.device).expand(B, -1), n + 1


def zero_residual(tower: torch.nn.Module) -> None:
    """Start every encoder layer of a SigLIP tower as the identity: its attention output projection and its MLP's
    second linear at zero (the weights still train from the first step). Each patch then starts as its own little
    MLP on its pixels, which learns local evidence (a shape's edge in the patch) quickly, and attention is mixed in
    as it helps; from the default init the tower learnt per-patch shapes far slower than a per-patch MLP
    (benchmarks/diag_demo_probe.py)."""
    for layer in tower.encoder.layers if hasattr(tower, "encoder") else tower.vision_model.encoder.layers:
        for lin in (layer.self_attn.out_proj, layer.mlp.fc2):
            torch.nn.init.zeros_(lin.weight)
            torch.nn.init.zeros_(lin.bias)


def shared_video_rows(lm, emb: torch.Tensor, pos: torch.Tensor, suffix: torch.Tensor, spos: torch.Tensor, k: int,
                      layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The LLM on k question rows per clip that share the clip's prefix + video: (hidden state `layer` of the shared
    part (B, L, D), last hidden state of the rows (B*k, S, D)), equal to running each full row (the shared part
    once, its key/value cache repeated for the k rows; gradients flow through the cache).

    emb, pos: (B, L, D), (B, L) the shared part; suffix, spos: (B*k, S, D), (B*k, S) the rows, clip-major,
    right-padded (no mask needed: causal attention never lets a real token see the padding after it)."""
    out = lm(inputs_embeds=emb, position_ids=pos, use_cache=True, output_hidden_states=True)
    # transformers >= 5.2x names it `cache` (and warns on the old name); older 5.x only know `past_key_values`
    name = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    cache = out[name]
    cache.batch_repeat_interleave(k)
    rows = lm(inputs_embeds=suffix, position_ids=spos, use_cache=True, **{name: cache}).last_hidden_state
    return out.hidden_states[layer], rows


def fit(args) -> Trained:
    """Train for args.minutes (or args.max_steps) and return the trained modules (fp32, eval mode).

    From scratch, or with args.resume from a training state written by an earlier call (args.state): the budget,
    phases and LR schedules are then those of the whole run, and this call stops after args.call_minutes (or when
    the whole budget is spent), so one run can be split over several device calls of limited length."""
    if args.export and not args.resume:
        raise ValueError("--export writes the weights of a resumed state: give --resume STATE")
    state = train_state.load(args) if args.resume else None
    torch.manual_seed(args.seed + (state["step"] if state else 0))
    random.seed(args.seed + (state["step"] if state else 0))
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    text = dict(demo.TEXT, num_hidden_layers=args.text_layers)
    model, tok, head, head_cfg = demo.build(args.seed, text=text)
    if state is None:
        zero_residual(model.model.vision_tower)
    model.to(dev).train()
    head.to(dev).train()
    core = model.model
    lm = core.language_model
    palette = _palette()
    grid = demo.VISION["image_size"] // demo.VISION["patch_size"]
    npf = math.ceil(grid / 2) ** 2
    T, k = args.frames, args.questions
    n_video = T * npf + 1  # + the newline token
    vdim, tdim = demo.VISION["hidden_size"], model.config.text_config.hidden_size
    aux_layer = args.aux_layer or max(1, args.text_layers // 2)  # hidden_states[i]: the output of layer i
    from fastvid_cli import synth

    n_shape, n_colour = len(synth.SHAPES) + 1, len(synth.COLOURS) + 1
    vision_aux = torch.nn.ModuleDict(dict(
        presence=torch.nn.Linear(head_cfg["hidden_size"], len(palette)),
        shape=torch.nn.Linear(vdim, n_shape), colour=torch.nn.Linear(vdim, n_colour),
        background=torch.nn.Linear(vdim, len(synth.BACKGROUNDS)))).to(dev)
    pooled_grid = math.ceil(grid / 2)
    cell_classes = dict(shape=n_shape, colour=n_colour, motion=len(MOTIONS), rank=MAX_RANK + 1, newest=3,
                        x=pooled_grid, y=pooled_grid)
    llm_aux = torch.nn.ModuleDict({n: torch.nn.Linear(tdim, c) for n, c in cell_classes.items()}).to(dev)
    ids = PromptIds()
    prefix = torch.tensor(ids.prefix, device=dev)
    P = len(ids.prefix)
    loader = torch.utils.data.DataLoader(
        Clips(args.batch, T, k, args.short_share, args.mc_target, args.seed, grid,
              start=state["step"] * args.batch if state else 0), batch_size=None,
        num_workers=args.workers, prefetch_factor=4 if args.workers else None,
        persistent_workers=args.workers > 0, pin_memory=dev.type == "cuda")
    vision_params = [*core.vision_tower.parameters(), *head.parameters(), *vision_aux.parameters()]
    llm_params = [*core.multi_modal_projector.parameters(), core.image_newline, *lm.parameters(),
                  *llm_aux.parameters()]
    params = vision_params + llm_params
    every = [*model.parameters(), *head.parameters(), *vision_aux.parameters(), *llm_aux.parameters()]
    assert len(params) == len({id(p) for p in params}) and {id(p) for p in params} == {id(p) for p in every}, \
        "every parameter in exactly one group (lm_head is tied to the input embeddings)"
    opt = torch.optim.AdamW([dict(params=vision_params), dict(params=llm_params)], lr=args.lr, weight_decay=0.01,
                            betas=(0.9, 0.98))
    emb_layer = model.get_input_embeddings()
    cast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda" or args.cpu_bf16)
    log, step, budget = [], 0, args.minutes * 60
    hist: dict[str, list] = {}
    type_hits = np.zeros((len(synth.TYPES), 2))
    wait, joint_from, phase_steps, done = 0.0, None, {"vision": 0, "joint": 0}, 0.0
    modules = dict(model=model, head=head, vision_aux=vision_aux, llm_aux=llm_aux)
    if state is not None:
        progress = train_state.restore(state, modules, opt)
        if progress["new"]:
            print(json.dumps({"resumed": progress["step"], "new_heads": progress["new"]}), flush=True)
        log, step, joint_from, phase_steps, done = (progress[n] for n in train_state.PROGRESS)
    it = iter(loader)
    t0 = time.perf_counter() - done  # elapsed time counts the earlier calls' training
    call_end = time.perf_counter() + (args.call_minutes * 60 if args.call_minutes else math.inf)
    call_last = step if args.export else step + args.call_steps if args.call_steps else math.inf

    def schedule(frac: float, start: float, steps: int) -> float:
        """Warm-up over args.warmup steps, then cosine from 1 to args.lr_floor over [start, 1] of the budget."""
        f = min(1.0, max(0.0, (frac - start) / max(1e-9, 1 - start)))
        return min(1.0, (steps + 1) / args.warmup) * (args.lr_floor + (1 - args.lr_floor) * 0.5 * (
            1 + math.cos(math.pi * f)))

    while True:
        elapsed = time.perf_counter() - t0
        if elapsed > budget or step >= args.max_steps or time.perf_counter() > call_end or step >= call_last:
            break
        frac = min(1.0, max(elapsed / budget, step / args.max_steps))
        joint = frac >= args.vision_share
        if joint and joint_from is None:
            joint_from = frac
        phase = "joint" if joint else "vision"
        lr_v = args.lr * schedule(frac, 0.0, step) * (args.vision_lr_scale if joint else 1.0)
        lr_t = args.lr * schedule(frac, joint_from, phase_steps["joint"]) if joint else 0.0
        opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = lr_v, lr_t
        tw = time.perf_counter()
        b = {name: v.to(dev, non_blocking=True) for name, v in next(it).items()}
        wait += time.perf_counter() - tw
        B = b["frames"].shape[0]
        R = B * k
        x = b["frames"].permute(0, 1, 4, 2, 3).flatten(0, 1).float()
        x = x + torch.randn_like(x) * 2.0  # compression-like noise: test clips go through H.264
        x = F.interpolate(x, size=(demo.VISION["image_size"],) * 2, mode="bicubic", align_corners=False)
        x = (x.clamp(0, 255) / 255.0 - MEAN) / STD
        logs = {}
        with cast:
            hs = core.vision_tower(x, output_hidden_states=True).hidden_states[-1]  # (B*T, grid*grid, C)
            _, pooled = head(hs)
            presence_loss = F.binary_cross_entropy_with_logits(vision_aux["presence"](pooled).float(),
                                                               b["presence"].flatten(0, 1))
            patch = b["patch"].flatten(0, 1).flatten(-2)  # (B*T, 2, grid*grid)
            shape_logits = vision_aux["shape"](hs)
            patch_loss = (_weighted_ce(shape_logits, patch[:, 0], args.bg_weight)
                          + _weighted_ce(vision_aux["colour"](hs), patch[:, 1], args.bg_weight))
            bg_logits = vision_aux["background"](hs).float()  # every patch: its frame's background colour
            bg_target = b["background"].flatten()[:, None].expand(-1, hs.shape[1])
            background_loss = F.cross_entropy(bg_logits.flatten(0, 1), bg_target.flatten())
            loss = (args.patch_weight * patch_loss + args.presence_weight * presence_loss
                    + args.background_weight * background_loss)
            logs.update(patch_loss=patch_loss, presence_loss=presence_loss, background_loss=background_loss,
                        patch_shape_acc=_fg_acc(shape_logits, patch[:, 0]),
                        patch_background_acc=(bg_logits.argmax(-1) == bg_target).float().mean())
            if joint:
                vfeat = core.apply_pooling(core.multi_modal_projector(hs)).reshape(B, T * npf, -1)
                video = torch.cat([vfeat, core.image_newline.to(vfeat.dtype).expand(B, 1, -1)], 1)
                slots = vpos = torch.arange(n_video, device=dev).expand(B, -1)
                text_at = n_video
                cell = b["cell"].permute(0, 1, 3, 4, 2).flatten(1, 3)  # (B, T*npf, 5)
                if frac >= args.drop_from and random.random() < args.drop_share:
                    # the same keep count for every clip (one tensor), a different set per clip and frame
                    keep = max(1, int(npf * random.choice([0.1, 0.25, 0.5])))
                    sel = _object_first_keep(cell[..., 0].reshape(B, T, npf), keep, args.drop_bias)
                    sel = (sel + torch.arange(T, device=dev)[:, None] * npf).flatten(1)
                    cell = cell.gather(1, sel[..., None].expand(-1, -1, cell.shape[-1]))
                    slots, vpos, text_at = kept_layout(sel, n_video, random.random() < args.compact_share)
                    video = video.gather(1, slots[..., None].expand(-1, -1, video.shape[-1]))
                V = video.shape[1]
                # the prefix + video once per clip; its key/value cache then serves the clip's k question rows
                emb = torch.cat([emb_layer(prefix).expand(B, -1, -1).to(video.dtype), video], 1)
                pos = torch.cat([torch.arange(P, device=dev).expand(B, -1), P + vpos], 1)
                S = b["suffix"].shape[1]
                spos = (P + text_at + torch.arange(S, device=dev)).expand(R, -1)
                mid, hs_q = shared_video_rows(lm, emb, pos, emb_layer(b["suffix"]).to(video.dtype), spos, k,
                                              aux_layer)
                mid = mid[:, P:P + V - 1]  # the grid tokens (not the newline)
                # where each token sits on its frame's grid (all tokens): direction questions compare the places
                # of an object's tokens across frames, so they need a position that the answer can read
                cell_pos = slots[:, :-1] % npf  # the token's own place, whatever position id it got
                cell_loss, xy_hit = 0.0, True
                for name, want in (("x", cell_pos % pooled_grid), ("y", cell_pos // pooled_grid)):
                    logits = llm_aux[name](mid).float()
                    cell_loss = cell_loss + F.cross_entropy(logits.flatten(0, 1), want.flatten())
                    xy_hit = xy_hit & (logits.argmax(-1) == want)
                logs["cell_xy_acc"] = xy_hit.float().mean()
                for j, name in enumerate(CELL_TARGETS):
                    logits = llm_aux[name](mid)
                    cell_loss = cell_loss + _weighted_ce(logits, cell[..., j], args.bg_weight)
                    if name in ("shape", "rank"):
                        logs[f"cell_{name}_acc"] = _fg_acc(logits, cell[..., j])
                    elif name == "motion":
                        logs["cell_moving_acc"] = _fg_acc(logits, cell[..., j], lo=MOTIONS.index("left"))
                # every position through the head (no boolean indexing: no host sync); unlabelled ones weigh 0
                ce = F.cross_entropy(model.lm_head(hs_q).float().flatten(0, 1), b["labels"].flatten(),
                                     reduction="none", ignore_index=-100)
                w = torch.where(b["first"], 1.0, args.rest_weight) * (b["labels"] != -100)
                qa_loss = (ce * w.flatten()).sum() / w.sum()
                loss = loss + qa_loss + args.cell_weight * cell_loss
                logs.update(qa_loss=qa_loss, cell_loss=cell_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        phase_steps[phase] += 1
        if joint:  # first-answer-token accuracy per question type (the letter or the first byte of the answer word)
            with torch.no_grad():
                hit = (model.lm_head(hs_q[b["first"]]).argmax(-1) == b["labels"][b["first"]]).float()
            logs["first_token_acc"] = hit.mean()
            np.add.at(type_hits, (b["qtype"].cpu().numpy(), 0), hit.cpu().numpy())
            np.add.at(type_hits, (b["qtype"].cpu().numpy(), 1), 1)
        for name, v in logs.items():
            hist.setdefault(name, []).append(v.detach().float())
        if step % args.log_every == 0:
            now = time.perf_counter() - t0
            since = now - (log[-1]["minutes"] * 60 if log else 0)
            row = dict(step=step, phase=phase, minutes=round(now / 60, 2), lr=round(lr_t if joint else lr_v, 6),
                       **{n: round(torch.stack(v).nanmean().item(), 4) for n, v in hist.items()},
                       steps_per_s=round(args.log_every / max(1e-9, since), 2),
                       data_wait_share=round(wait / max(1e-9, since), 3))
            if type_hits[:, 1].sum():
                row["by_type"] = {t: round(float(type_hits[i, 0] / max(1, type_hits[i, 1])), 3)
                                  for i, t in enumerate(synth.TYPES)}
            log.append(row)
            print(json.dumps(row), flush=True)
            hist, wait = {}, 0.0
            type_hits[:] = 0
    seconds = time.perf_counter() - t0
    if args.state:
        train_state.save(args.state, args, modules, opt, dict(
            log=log, step=step, joint_from=joint_from, phase_steps=phase_steps, seconds=seconds))
    model.eval()
    head.eval()
    summary = dict(seed=args.seed, steps=step, phase_steps=phase_steps, batch=args.batch, questions_per_clip=k,
                   frames=T, text_layers=args.text_layers, lr=args.lr, vision_share=args.vision_share,
                   vision_lr_scale=args.vision_lr_scale, short_share=args.short_share, mc_target=args.mc_target,
                   weights=dict(presence=args.presence_weight, patch=args.patch_weight, cell=args.cell_weight,
                                background_colour=args.background_weight,
                                rest=args.rest_weight, background=args.bg_weight),
                   drop=dict(share=args.drop_share, start=args.drop_from, bias=args.drop_bias,
                             compact=args.compact_share),
                   minutes=round(seconds / 60, 2), finished=seconds > budget or step >= args.max_steps,
                   log=log,
                   device=torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", torch=torch.__version__)
    return Trained(model, tok, head, head_cfg, summary)


def save(trained: Trained, out: str | Path) -> Path:
    """Write the model (fp16 safetensors), tokenizer, preprocessor config, saliency head and train_log.json."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained.model.to(torch.float16).save_pretrained(out_dir)
    trained.tok.save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [MEAN] * 3, "image_std": [STD] * 3, "size": {"height": 224, "width": 224}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255}, indent=2))
    write_head(out_dir / OWN_HEAD_FILE, trained.head.float(), trained.head_cfg)
    (out_dir / "train_log.json").write_text(json.dumps(trained.summary, indent=1))
    return out_dir


def train(args) -> dict:
    """fit + save: the training summary (also in OUT/train_log.json)."""
    trained = fit(args)
    save(trained, args.out)
    return trained.summary


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(demo.WEIGHTS))
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--max-steps", type=int, default=1_000_000,
                    help="stop after this many steps (phases and LR schedules then run over whichever ends first)")
    ap.add_argument("--batch", type=int, default=32, help="clips per step")
    ap.add_argument("--questions", type=int, default=4, help="questions asked of each clip per step (LLM rows)")
    ap.add_argument("--frames", type=int, default=demo.FRAMES)
    ap.add_argument("--text-layers", type=int, default=6,
                    help="LLM layers (demo.TEXT has 4: 6 leave room to relate frames after the middle layer that the "
                         "video-token targets train)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-floor", type=float, default=0.05, help="final LR as a share of --lr (cosine)")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up steps of each phase's new parameters")
    ap.add_argument("--vision-share", type=float, default=0.2,
                    help="share of the budget for the tower-only phase (dense per-patch targets)")
    ap.add_argument("--vision-lr-scale", type=float, default=0.5, help="the tower's LR in the joint phase, x --lr")
    ap.add_argument("--presence-weight", type=float, default=0.3, help="colour presence (trains the saliency head)")
    ap.add_argument("--background-weight", type=float, default=0.3,
                    help="every tower patch's frame background colour (so pruned token sets still carry it)")
    ap.add_argument("--patch-weight", type=float, default=1.0, help="shape and colour of each tower patch")
    ap.add_argument("--cell-weight", type=float, default=0.3,
                    help="shape, colour, motion so far, appearance rank, newest of each video token (LLM middle)")
    ap.add_argument("--aux-layer", type=int, default=0,
                    help="LLM hidden state the video-token targets read (0: half the layers)")
    ap.add_argument("--bg-weight", type=float, default=0.1, help="weight of the background class in dense targets")
    ap.add_argument("--rest-weight", type=float, default=0.25,
                    help="weight of the answer tokens after the first (and of eos) in the answer loss")
    ap.add_argument("--drop-share", type=float, default=0.3, help="share of late steps with video tokens dropped")
    ap.add_argument("--drop-from", type=float, default=0.6, help="budget share after which token drop starts")
    ap.add_argument("--drop-bias", type=float, default=0.7,
                    help="how strongly cells with an object are kept first when tokens are dropped")
    ap.add_argument("--compact-share", type=float, default=0.5,
                    help="share of the token-dropping steps whose kept tokens are renumbered contiguously (the layout "
                         "of HoliTom's, VidCom2's and FlashVID's reference code for LLaVA) instead of keeping their "
                         "own positions (FastVID's), so the model reads both layouts and neither kind of method is "
                         "judged on a layout the model never saw")
    ap.add_argument("--short-share", type=float, default=0.5,
                    help="share of short-answer (not multiple-choice) prompts")
    ap.add_argument("--mc-target", choices=["word", "letter"], default="word",
                    help="what a multiple-choice prompt is trained to answer: the option's word (default; the eval "
                         "scorer maps an answer naming exactly one option to its letter) or the letter itself (two "
                         "runs of a 6M model never learned the letter mapping: it stayed at chance)")
    ap.add_argument("--state", default=None,
                    help="also write the whole training state here at the end of this call (for --resume)")
    ap.add_argument("--resume", default=None,
                    help="go on from a state written by --state: the same recipe arguments; --minutes is the whole "
                         "run's budget (it may differ from the earlier calls')")
    ap.add_argument("--call-minutes", type=float, default=0.0,
                    help="stop this call after these minutes of training (0: run to the end of the budget)")
    ap.add_argument("--call-steps", type=int, default=0, help="stop this call after these many steps (0: no limit)")
    ap.add_argument("--export", action="store_true",
                    help="with --resume: no training, write the resumed state's weights to --out (to evaluate a run "
                         "half-way)")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cpu-bf16", action="store_true", help="autocast to bfloat16 on CPU too (default: float32)")
    ap.add_argument("--text-tower", action="store_true",
                    help="then train the demo's frame selector on the saved tower (demo/text_tower.py; CPU, minutes)")
    return ap


def main() -> None:
    args = parser().parse_args()
    try:
        summary = train(args)
    except ValueError as e:  # --resume: an unreadable state, or one whose recipe differs from this call's
        raise SystemExit(f"error: {e}") from None
    print(f"trained {summary['steps']} steps in {summary['minutes']} min on {summary['device']}")
    if args.text_tower:  # the selector's heads sit on the vision tower just saved: retrain them with it
        from fastvid_cli.demo.text_tower import train_text

        train_text(Path(args.out))


if __name__ == "__main__":
    main()
