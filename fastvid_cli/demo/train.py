"""Train the demo model on the synthetic shapes benchmark (GPU; a fixed seed; logs loss and accuracy).

    python -m fastvid_cli.demo.train --out fastvid_cli/demo/weights --minutes 12

What is trained, end to end: SigLIP-style tower, projector, Qwen2 LLM (answer cross-entropy on the benchmark's
multiple-choice and short-answer prompts, exactly the prompts `fastvid eval` uses), plus the attention-pooling
saliency head with an auxiliary task: from each frame's pooled vector, predict which palette colours are visible in
that frame. To answer it the probe must attend to the shapes, which is what makes FastVID's saliency meaningful for
this model. Half the batches drop a random share of the video tokens (original positions kept), so the model has
seen reduced token sets; no pruning method is used in training, so none is favoured.

Two dense auxiliary targets, read from the generator's clip description (training clips only), give the small model
a signal per token instead of one per question (without them a 7-minute run left shape and motion questions at
chance):
  - per tower patch (16x16 grid, before pooling): which shape and which colour covers the patch's centre;
  - per video token at the LLM's last layer (8x8 pooled grid): how the object covering the cell moves over the
    clip (none / static / left / right / up / down), which needs the other frames, so it teaches the LLM to relate
    frames, not the per-frame tower.
Each clip is rendered once and asked several of its questions (the tower runs once per clip, the LLM once per
question), chosen to balance the question types.

Training clips come from seeds 0 .. SEED_END-1 (the test split uses 1_000_000 on and the example search 2_000_000
on, never seen here). Labels are the generator's own; the test split is not touched.
"""

from __future__ import annotations

import argparse
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
from fastvid_cli.models.siglip_head import OWN_HEAD_FILE, write_head

MEAN = STD = 0.5
SEED_END = 800_000  # training seeds stay below this (benchmarks/diag_demo_margins.py relies on it)
MOTIONS = ("none", "static", "left", "right", "up", "down")
# How often a clip's extra (non-primary) questions are drawn by type: count is learnt first and alone, the shape and
# motion questions are the ones a short run leaves at chance.
EXTRA_WEIGHT = {"count": 0.2, "after_cut": 0.5, "colour_of_shape": 1.0, "shape_of_colour": 1.5, "direction": 2.0}
# Share of clips skipped by their primary type (seed % 8) before anything is rendered: counting is learnt early
# (98 % after 7 minutes) and is asked again as an extra question; the order questions exist only as primaries.
PRIMARY_SKIP = {"count": 0.5}


def _palette() -> np.ndarray:
    from fastvid_cli import synth

    return np.array([np.asarray(rgb) for rgb in synth.COLOURS.values()], dtype=np.int16)


def colour_presence(frames: np.ndarray, palette: np.ndarray, min_pixels: int = 24) -> np.ndarray:
    """(T,H,W,3) uint8 -> (T, K) float: is palette colour k visible in frame t (>= min_pixels close pixels).

    Reference for `clip_targets`' presence, which reads the same thing from the clip description ~40x faster."""
    diff = np.abs(frames[:, :, :, None, :].astype(np.int16) - palette[None, None, None]).sum(-1)  # (T,H,W,K)
    return ((diff < 60).sum((1, 2)) >= min_pixels).astype(np.float32)


def _motion(track) -> str:
    """static / left / right / up / down of an object track (the generator moves objects in straight lines)."""
    pts = [(s.x, s.y) for s in track.states if s is not None]
    dx, dy = pts[-1][0] - pts[0][0], pts[-1][1] - pts[0][1]
    if dx == 0 and dy == 0:
        return "static"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def clip_targets(spec, grid: int, pooled: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense training targets of a clip from its description (exact: shapes never overlap and stay inside).

    presence (T, K) float: palette colour k is on frame t (what `colour_presence` measures on pixels);
    patch (T, 2, grid, grid) int64: shape index + 1 and colour index + 1 of the object covering each patch centre
    (0: background); motion (T, pooled, pooled) int64: index in MOTIONS of the object covering each pooled cell's
    centre."""
    from fastvid_cli import synth

    T, H = spec.frames, spec.height
    colours, shapes = list(synth.COLOURS), list(synth.SHAPES)
    presence = np.zeros((T, len(colours)), np.float32)
    patch = np.zeros((T, 2, grid, grid), np.int64)
    motion = np.zeros((T, pooled, pooled), np.int64)
    cp = (np.arange(grid) + 0.5) * H / grid - 0.5  # patch centres in clip pixels
    cq = (np.arange(pooled) + 0.5) * H / pooled - 0.5
    for obj in spec.objects:
        m = MOTIONS.index(_motion(obj))
        for t, s in enumerate(obj.states):
            if s is None:
                continue
            c = colours.index(s.colour)
            presence[t, c] = 1.0
            inside = synth._shape_mask(obj.shape, cp[None, :] - s.x, cp[:, None] - s.y, obj.radius)
            patch[t, 0][inside] = shapes.index(obj.shape) + 1
            patch[t, 1][inside] = c + 1
            inside = synth._shape_mask(obj.shape, cq[None, :] - s.x, cq[:, None] - s.y, obj.radius)
            motion[t][inside] = m
    return presence, patch, motion


def pick_questions(rng: random.Random, qas: list, k: int) -> list:
    """k of a clip's questions: its primary one (types balanced over seeds), then extras drawn by EXTRA_WEIGHT
    without replacement (with replacement once they run out)."""
    out, rest = [qas[0]], list(qas[1:])
    while len(out) < k:
        if not rest:
            out.append(rng.choice(qas))
            continue
        q = rng.choices(rest, weights=[EXTRA_WEIGHT.get(q.type, 1.0) for q in rest])[0]
        rest.remove(q)
        out.append(q)
    return out


class PromptIds:
    """Token ids of the chat prompt around the <video> run: a prefix shared by every question and a per-question
    suffix (question, instruction, generation prompt), exactly what the adapter builds at inference."""

    def __init__(self):
        from fastvid_cli.tiny import byte_tokenizer

        self.tok = byte_tokenizer()
        self.vid = self.tok.convert_tokens_to_ids("<video>")
        self.eos = self.tok.eos_token_id
        self.pad = self.tok.pad_token_id
        self.prefix = self._split("x")[0]

    def _split(self, prompt: str) -> tuple[list[int], list[int]]:
        msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
        text = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        v = ids.index(self.vid)
        return ids[:v], ids[v + 1:]

    def row(self, prompt: str, answer: str) -> tuple[list[int], int]:
        """(suffix ids + answer ids + eos, number of target tokens)."""
        prefix, suffix = self._split(prompt)
        assert prefix == self.prefix, "the chat template's text before <video> must not depend on the question"
        target = self.tok(answer, add_special_tokens=False)["input_ids"] + [self.eos]
        return suffix + target, len(target)


class Clips(torch.utils.data.IterableDataset):
    """Endless batches: each worker renders seeds wid, wid+W, ... (< SEED_END) and yields whole collated batches
    (pixels, dense targets, and k question rows per clip, padded), so the training process only moves tensors."""

    def __init__(self, batch: int, frames: int, questions: int, short_share: float, mc_target: str, seed: int):
        self.batch, self.frames, self.questions = batch, frames, questions
        self.short_share, self.mc_target, self.seed = short_share, mc_target, seed
        self.grid = demo.VISION["image_size"] // demo.VISION["patch_size"]
        self.pooled = math.ceil(self.grid / 2)

    def __iter__(self):
        from fastvid_cli import synth

        info = torch.utils.data.get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(f"{self.seed}/{wid}")
        ids = PromptIds()
        seed = wid
        while True:
            clips = []
            while len(clips) < self.batch:
                this, seed = seed, seed + workers if seed + workers < SEED_END else wid
                if rng.random() < PRIMARY_SKIP.get(synth.TYPES[this % len(synth.TYPES)], 0.0):
                    continue
                spec, qas = synth.generate(this, frames=self.frames)
                rows = []
                for qa in pick_questions(rng, qas, self.questions):
                    short = rng.random() < self.short_share
                    prompt = synth.short_prompt(qa) if short else synth.mc_prompt(qa)
                    answer = qa.short_answer if short or self.mc_target == "word" else qa.answer
                    rows.append((*ids.row(prompt, answer), synth.TYPES.index(qa.type)))
                clips.append((synth.render(spec), *clip_targets(spec, self.grid, self.pooled), rows))
            yield collate(clips, ids.pad)


def collate(clips: list, pad: int) -> dict[str, torch.Tensor]:
    """Stack a batch of (pixels, presence, patch, motion, rows) clips. Question rows are clip-major (k per clip);
    `labels[r, j]` is the token that position j of row r's suffix must predict (-100: none), `first` marks the
    position that predicts the first answer token."""
    rows = [r for c in clips for r in c[4]]
    S = max(len(ids) for ids, _, _ in rows)
    suffix = torch.full((len(rows), S), pad, dtype=torch.long)
    labels = torch.full((len(rows), S), -100, dtype=torch.long)
    first = torch.zeros((len(rows), S), dtype=torch.bool)
    for i, (ids, n_target, _) in enumerate(rows):
        n = len(ids)
        suffix[i, :n] = torch.tensor(ids)
        labels[i, n - n_target - 1:n - 1] = torch.tensor(ids[n - n_target:])
        first[i, n - n_target - 1] = True
    return dict(frames=torch.from_numpy(np.stack([c[0] for c in clips])),
                presence=torch.from_numpy(np.stack([c[1] for c in clips])),
                patch=torch.from_numpy(np.stack([c[2] for c in clips])),
                motion=torch.from_numpy(np.stack([c[3] for c in clips])),
                suffix=suffix, suffix_len=torch.tensor([len(r[0]) for r in rows]), labels=labels, first=first,
                qtype=torch.tensor([r[2] for r in rows]))


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


def fit(args) -> Trained:
    """Train from scratch for args.minutes (or args.max_steps) and return the trained modules (fp32, eval mode)."""
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model, tok, head, head_cfg = demo.build(args.seed)
    model.to(dev).train()
    head.to(dev).train()
    core = model.model
    palette = _palette()
    grid = demo.VISION["image_size"] // demo.VISION["patch_size"]
    npf = math.ceil(grid / 2) ** 2
    T, k = args.frames, args.questions
    n_video = T * npf + 1  # + the newline token
    vdim, tdim = demo.VISION["hidden_size"], model.config.text_config.hidden_size
    from fastvid_cli import synth

    aux = torch.nn.ModuleDict(dict(
        presence=torch.nn.Linear(head_cfg["hidden_size"], len(palette)),
        shape=torch.nn.Linear(vdim, len(synth.SHAPES) + 1),
        colour=torch.nn.Linear(vdim, len(synth.COLOURS) + 1),
        motion=torch.nn.Linear(tdim, len(MOTIONS)))).to(dev)
    ids = PromptIds()
    prefix = torch.tensor(ids.prefix, device=dev)
    P = len(ids.prefix)
    loader = torch.utils.data.DataLoader(
        Clips(args.batch, T, k, args.short_share, args.mc_target, args.seed), batch_size=None,
        num_workers=args.workers, prefetch_factor=4 if args.workers else None,
        persistent_workers=args.workers > 0, pin_memory=dev.type == "cuda")
    params = list(model.parameters()) + list(head.parameters()) + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    emb_layer = model.get_input_embeddings()
    log, step, budget = [], 0, args.minutes * 60
    hist: dict[str, list] = {}
    type_hits = np.zeros((len(synth.TYPES), 2))
    wait = 0.0
    it = iter(loader)
    t0 = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed > budget or step >= args.max_steps:
            break
        frac = min(1.0, max(elapsed / budget, step / args.max_steps))
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (args.lr_floor + (1 - args.lr_floor) * 0.5 * (
            1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        tw = time.perf_counter()
        b = {name: v.to(dev, non_blocking=True) for name, v in next(it).items()}
        wait += time.perf_counter() - tw
        B = b["frames"].shape[0]
        R = B * k
        x = b["frames"].permute(0, 1, 4, 2, 3).flatten(0, 1).float()
        x = x + torch.randn_like(x) * 2.0  # compression-like noise: test clips go through H.264
        x = F.interpolate(x, size=(demo.VISION["image_size"],) * 2, mode="bicubic", align_corners=False)
        x = (x.clamp(0, 255) / 255.0 - MEAN) / STD
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            hs = core.vision_tower(x, output_hidden_states=True).hidden_states[-1]  # (B*T, grid*grid, C)
            vfeat = core.apply_pooling(core.multi_modal_projector(hs)).reshape(B, T * npf, -1)
            _, pooled = head(hs)
            presence_loss = F.binary_cross_entropy_with_logits(aux["presence"](pooled).float(),
                                                               b["presence"].flatten(0, 1))
            patch = b["patch"].flatten(0, 1).flatten(-2)  # (B*T, 2, grid*grid)
            patch_loss = (F.cross_entropy(aux["shape"](hs).float().transpose(1, 2), patch[:, 0])
                          + F.cross_entropy(aux["colour"](hs).float().transpose(1, 2), patch[:, 1]))
            video = torch.cat([vfeat, core.image_newline.to(vfeat.dtype).expand(B, 1, -1)], 1)
            video = video.repeat_interleave(k, 0)  # (R, n_video, D): k questions per clip
            vpos = torch.arange(n_video, device=dev).expand(R, -1)
            motion = b["motion"].flatten(1).repeat_interleave(k, 0)  # (R, T*npf)
            drop = random.random() < args.drop_share
            if drop:  # the same keep count for every row (one tensor), a different random set per row and frame
                keep = max(1, int(npf * random.choice([0.1, 0.15, 0.25, 0.5])))
                sel = torch.rand(R, T, npf, device=dev).argsort(-1)[..., :keep].sort(-1).values
                sel = (sel + torch.arange(T, device=dev)[:, None] * npf).flatten(1)
                motion = motion.gather(1, sel)
                vpos = torch.cat([sel, torch.full((R, 1), n_video - 1, device=dev)], 1)
                video = video.gather(1, vpos[..., None].expand(-1, -1, video.shape[-1]))
            V = video.shape[1]
            S = b["suffix"].shape[1]
            emb = torch.cat([emb_layer(prefix).expand(R, -1, -1).to(video.dtype), video,
                             emb_layer(b["suffix"]).to(video.dtype)], 1)
            pos = torch.cat([torch.arange(P, device=dev).expand(R, -1), P + vpos,
                             P + n_video + torch.arange(S, device=dev).expand(R, -1)], 1)
            am = torch.cat([torch.ones(R, P + V, device=dev, dtype=torch.long),
                            (torch.arange(S, device=dev)[None] < b["suffix_len"][:, None]).long()], 1)
            h = core.language_model(inputs_embeds=emb, attention_mask=am, position_ids=pos).last_hidden_state
            motion_loss = F.cross_entropy(aux["motion"](h[:, P:P + V - 1]).float().transpose(1, 2), motion)
            hs_q = h[:, P + V:]
            sel = b["labels"] != -100
            qa_loss = F.cross_entropy(model.lm_head(hs_q[sel]).float(), b["labels"][sel])
            loss = (qa_loss + args.aux_weight * presence_loss + args.patch_weight * patch_loss
                    + args.motion_weight * motion_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        # first-answer-token accuracy per question type (the letter or the first byte of the answer word)
        with torch.no_grad():
            hit = (model.lm_head(hs_q[b["first"]]).argmax(-1) == b["labels"][b["first"]]).float()
        for name, v in (("qa_loss", qa_loss), ("presence_loss", presence_loss), ("patch_loss", patch_loss),
                        ("motion_loss", motion_loss), ("first_token_acc", hit.mean())):
            hist.setdefault(name, []).append(v.detach())
        np.add.at(type_hits, (b["qtype"].cpu().numpy(), 0), hit.cpu().numpy())
        np.add.at(type_hits, (b["qtype"].cpu().numpy(), 1), 1)
        if step % args.log_every == 0:
            now = time.perf_counter() - t0
            row = dict(step=step, minutes=round(now / 60, 2), lr=round(lr, 6),
                       **{n: round(torch.stack(v).float().mean().item(), 4) for n, v in hist.items()},
                       steps_per_s=round(args.log_every / max(1e-9, now - (log[-1]["minutes"] * 60 if log else 0)),
                                         2),
                       data_wait_share=round(wait / max(1e-9, now - (log[-1]["minutes"] * 60 if log else 0)), 3),
                       by_type={t: round(type_hits[i, 0] / max(1, type_hits[i, 1]), 3)
                                for i, t in enumerate(synth.TYPES)})
            log.append(row)
            print(json.dumps(row), flush=True)
            hist, wait = {}, 0.0
            type_hits[:] = 0
    model.eval()
    head.eval()
    summary = dict(seed=args.seed, steps=step, batch=args.batch, questions_per_clip=k, frames=T, lr=args.lr,
                   short_share=args.short_share, mc_target=args.mc_target, weights=dict(
                       presence=args.aux_weight, patch=args.patch_weight, motion=args.motion_weight),
                   minutes=round((time.perf_counter() - t0) / 60, 2), log=log,
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
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--max-steps", type=int, default=1_000_000,
                    help="stop after this many steps (the LR schedule then runs over whichever ends first)")
    ap.add_argument("--batch", type=int, default=32, help="clips per step")
    ap.add_argument("--questions", type=int, default=2, help="questions asked of each clip per step (LLM rows)")
    ap.add_argument("--frames", type=int, default=demo.FRAMES)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-floor", type=float, default=0.05, help="final LR as a share of --lr (cosine)")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--aux-weight", type=float, default=0.5, help="colour presence (trains the saliency head)")
    ap.add_argument("--patch-weight", type=float, default=0.3, help="shape and colour of each tower patch")
    ap.add_argument("--motion-weight", type=float, default=0.3, help="motion of each video token (LLM side)")
    ap.add_argument("--drop-share", type=float, default=0.5, help="share of steps with random video-token drop")
    ap.add_argument("--short-share", type=float, default=0.5,
                    help="share of short-answer (not multiple-choice) prompts")
    ap.add_argument("--mc-target", choices=["word", "letter"], default="word",
                    help="what a multiple-choice prompt is trained to answer: the option's word (default; the eval "
                         "scorer maps an answer naming exactly one option to its letter) or the letter itself (two "
                         "runs of a 6M model never learned the letter mapping: it stayed at chance)")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--text-tower", action="store_true",
                    help="then train the demo's frame selector on the saved tower (demo/text_tower.py; CPU, minutes)")
    return ap


def main() -> None:
    args = parser().parse_args()
    summary = train(args)
    print(f"trained {summary['steps']} steps in {summary['minutes']} min on {summary['device']}")
    if args.text_tower:  # the selector's heads sit on the vision tower just saved: retrain them with it
        from fastvid_cli.demo.text_tower import train_text

        train_text(Path(args.out))


if __name__ == "__main__":
    main()
