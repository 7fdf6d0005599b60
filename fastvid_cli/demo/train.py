"""Train the demo model on the synthetic shapes benchmark (GPU; a fixed seed; logs loss and accuracy).

    python -m fastvid_cli.demo.train --out fastvid_cli/demo/weights --minutes 12

What is trained, end to end: SigLIP-style tower, projector, Qwen2 LLM (answer cross-entropy on the benchmark's
multiple-choice and short-answer prompts, exactly the prompts `fastvid eval` uses), plus the attention-pooling
saliency head with
an auxiliary task: from each frame's pooled vector, predict which palette colours are visible in that frame. To
answer it the probe must attend to the shapes, which is what makes FastVID's saliency meaningful for this model.
Half the batches drop a random share of the video tokens (original positions kept), so the model has seen
reduced token sets; no pruning method is used in training, so none is favoured.

Training clips are rendered from seeds 0.. (the test split uses seeds from 1_000_000 on, never seen here).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastvid_cli import demo
from fastvid_cli.models.siglip_head import OWN_HEAD_FILE, write_head

MEAN = STD = 0.5


def _palette() -> np.ndarray:
    from fastvid_cli import synth

    return np.array([np.asarray(rgb) for rgb in synth.COLOURS.values()], dtype=np.int16)


def colour_presence(frames: np.ndarray, palette: np.ndarray, min_pixels: int = 24) -> np.ndarray:
    """(T,H,W,3) uint8 -> (T, K) float: is palette colour k visible in frame t (>= min_pixels close pixels)."""
    diff = np.abs(frames[:, :, :, None, :].astype(np.int16) - palette[None, None, None]).sum(-1)  # (T,H,W,K)
    return ((diff < 60).sum((1, 2)) >= min_pixels).astype(np.float32)


class Examples(torch.utils.data.IterableDataset):
    """Endless (frames, prompt, answer, presence) examples from clip seeds start, start+step, ..."""

    def __init__(self, start: int, frames: int, short_share: float = 0.5, mc_target: str = "word"):
        self.start, self.frames, self.short_share, self.mc_target = start, frames, short_share, mc_target

    def __iter__(self):
        from fastvid_cli import synth

        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        palette = _palette()
        span = 50_000  # per worker; 16 workers stay far below the test seeds (synth.TEST_SEED_START)
        start = self.start + wid * span
        while True:
            rng = random.Random(start)
            for clip, qa in synth.iter_examples(start, span, frames=self.frames):
                # Half the prompts ask for the short answer (the word itself): that teaches what the video shows;
                # the multiple-choice half then only has to match that word to an option letter.
                if rng.random() < self.short_share:
                    yield clip, synth.short_prompt(qa), qa.short_answer, colour_presence(clip, palette)
                else:  # multiple choice: answered with the option's letter, or by naming the option (see main)
                    target = qa.answer if self.mc_target == "letter" else qa.short_answer
                    yield clip, synth.mc_prompt(qa), target, colour_presence(clip, palette)


def _collate(batch):
    frames = torch.from_numpy(np.stack([b[0] for b in batch]))
    return frames, [b[1] for b in batch], [b[2] for b in batch], torch.from_numpy(np.stack([b[3] for b in batch]))


class Batcher:
    """Prompt ids (with the expanded <video> run), answer labels, and token-drop positions for a batch."""

    def __init__(self, tok, tokens_per_frame: int, frames: int):
        self.tok = tok
        self.vid = tok.convert_tokens_to_ids("<video>")
        self.n_video = tokens_per_frame * frames + 1
        self.npf, self.frames = tokens_per_frame, frames
        self.eos = tok.eos_token_id

    def ids(self, prompt: str, answer: str) -> tuple[list[int], int]:
        msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
        text = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        v = ids.index(self.vid)
        full = ids[:v] + [self.vid] * self.n_video + ids[v + 1:]
        target = self.tok(answer, add_special_tokens=False)["input_ids"] + [self.eos]
        return full + target, len(target)


def train(args) -> dict:
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    dev = torch.device(args.device)
    model, tok, head, head_cfg = demo.build(args.seed)
    model.to(dev).train()
    head.to(dev).train()
    palette = _palette()
    aux = torch.nn.Linear(head_cfg["hidden_size"], len(palette)).to(dev)
    core = model.model
    grid = demo.VISION["image_size"] // demo.VISION["patch_size"]
    npf = math.ceil(grid / 2) ** 2
    batcher = Batcher(tok, npf, args.frames)
    loader = torch.utils.data.DataLoader(Examples(0, args.frames, args.short_share, args.mc_target),
                                         batch_size=args.batch, num_workers=args.workers,
                                         collate_fn=_collate, prefetch_factor=4 if args.workers else None,
                                         persistent_workers=args.workers > 0, pin_memory=dev.type == "cuda")
    params = list(model.parameters()) + list(head.parameters()) + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    log, t0, step = [], time.perf_counter(), 0
    budget = args.minutes * 60
    it = iter(loader)
    acc_hist, loss_hist, aux_hist = [], [], []
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed > budget or step >= args.max_steps:
            break
        frac = min(1.0, elapsed / budget)
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        frames, prompts, answers, presence = next(it)
        B, T = frames.shape[:2]
        x = frames.to(dev, non_blocking=True).permute(0, 1, 4, 2, 3).flatten(0, 1).float()
        x = x + torch.randn_like(x) * 2.0  # compression-like noise: test clips go through H.264
        x = F.interpolate(x, size=(demo.VISION["image_size"],) * 2, mode="bicubic", align_corners=False)
        x = ((x.clamp(0, 255) / 255.0 - MEAN) / STD)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            hs = core.vision_tower(x, output_hidden_states=True).hidden_states[-1]  # (B*T, P, C)
            vfeat = core.apply_pooling(core.multi_modal_projector(hs)).reshape(B, T * npf, -1)
            _, pooled = head(hs)
            aux_loss = F.binary_cross_entropy_with_logits(aux(pooled).float(), presence.to(dev).flatten(0, 1))
            seqs = [batcher.ids(p, a) for p, a in zip(prompts, answers)]
            drop = random.random() < 0.5
            keep_ratio = random.choice([0.1, 0.15, 0.25, 0.5]) if drop else 1.0
            emb_rows, pos_rows, lab_rows = [], [], []
            emb_layer = model.get_input_embeddings()
            for b, (ids, n_target) in enumerate(seqs):
                ids_t = torch.tensor(ids, device=dev)
                e = emb_layer(ids_t)
                v0 = ids.index(batcher.vid)
                video = torch.cat([vfeat[b], core.image_newline[None].to(vfeat.dtype)])
                e = torch.cat([e[:v0], video.to(e.dtype), e[v0 + batcher.n_video:]])
                pos = torch.arange(len(ids), device=dev)
                if drop:
                    k = max(1, int(npf * keep_ratio))
                    sel = torch.rand(T, npf, device=dev).argsort(-1)[:, :k].sort(-1).values
                    sel = (sel + torch.arange(T, device=dev)[:, None] * npf).flatten() + v0
                    keep = torch.cat([torch.arange(v0, device=dev), sel,
                                      torch.arange(v0 + T * npf, len(ids), device=dev)])
                    e, pos = e[keep], pos[keep]
                lab = torch.full((e.shape[0],), -100, device=dev, dtype=torch.long)
                lab[-n_target - 1:-1] = torch.tensor(ids[-n_target:], device=dev)  # predict each target token
                emb_rows.append(e)
                pos_rows.append(pos)
                lab_rows.append(lab)
            L = max(r.shape[0] for r in emb_rows)
            D = emb_rows[0].shape[-1]
            emb = torch.zeros(B, L, D, device=dev, dtype=emb_rows[0].dtype)
            pos = torch.zeros(B, L, device=dev, dtype=torch.long)
            lab = torch.full((B, L), -100, device=dev, dtype=torch.long)
            am = torch.zeros(B, L, device=dev, dtype=torch.long)
            for b in range(B):
                n = emb_rows[b].shape[0]
                emb[b, :n], pos[b, :n], lab[b, :n], am[b, :n] = emb_rows[b], pos_rows[b], lab_rows[b], 1
            out = model.model.language_model(inputs_embeds=emb, attention_mask=am, position_ids=pos)
            h = out.last_hidden_state
            sel = lab != -100
            logits = model.lm_head(h[sel]).float()
            qa_loss = F.cross_entropy(logits, lab[sel])
            loss = qa_loss + args.aux_weight * aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # train accuracy on the first answer token (the letter, or the first byte of the answer word), all rows
        with torch.no_grad():
            first = torch.zeros_like(sel)
            first[torch.arange(B), sel.float().argmax(1)] = True
            acc = (model.lm_head(h[first]).argmax(-1) == lab[first]).float().mean().item()
        acc_hist.append(acc)
        loss_hist.append(qa_loss.item())
        aux_hist.append(aux_loss.item())
        step += 1
        if step % args.log_every == 0:
            row = dict(step=step, minutes=round((time.perf_counter() - t0) / 60, 2), lr=round(lr, 6),
                       qa_loss=round(float(np.mean(loss_hist)), 4), aux_loss=round(float(np.mean(aux_hist)), 4),
                       first_token_acc=round(float(np.nanmean(acc_hist)), 4))
            log.append(row)
            print(json.dumps(row), flush=True)
            acc_hist, loss_hist, aux_hist = [], [], []
    model.eval()
    head.eval()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [MEAN] * 3, "image_std": [STD] * 3, "size": {"height": 224, "width": 224}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255}, indent=2))
    write_head(out_dir / OWN_HEAD_FILE, head.float(), head_cfg)
    summary = dict(seed=args.seed, steps=step, batch=args.batch, frames=args.frames, lr=args.lr,
                   short_share=args.short_share, mc_target=args.mc_target, minutes=round(
        (time.perf_counter() - t0) / 60, 2), log=log,
        device=torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
        torch=torch.__version__)
    (out_dir / "train_log.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(demo.WEIGHTS))
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=demo.FRAMES)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--aux-weight", type=float, default=0.5)
    ap.add_argument("--short-share", type=float, default=0.5,
                    help="share of short-answer (not multiple-choice) prompts")
    ap.add_argument("--mc-target", choices=["word", "letter"], default="word",
                    help="what a multiple-choice prompt is trained to answer: the option's word (default; the eval "
                         "scorer maps an answer naming exactly one option to its letter) or the letter itself (two "
                         "runs of a 6M model never learned the letter mapping: it stayed at chance)")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--text-tower", action="store_true",
                    help="then train the demo's frame selector on the saved tower (demo/text_tower.py; CPU, minutes)")
    args = ap.parse_args()
    summary = train(args)
    print(f"trained {summary['steps']} steps in {summary['minutes']} min on {summary['device']}")
    if args.text_tower:  # the selector's heads sit on the vision tower just trained: retrain them with it
        from fastvid_cli.demo.text_tower import train_text

        train_text(Path(args.out))


if __name__ == "__main__":
    main()
