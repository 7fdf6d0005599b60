"""The demo model's frame selector: a small text tower trained contrastively against the demo's own vision tower,
so that `--select` and `fastvid find` mean something with `--model demo`, offline.

    python -m fastvid_cli.demo.text_tower --out fastvid_cli/demo/weights     # CPU, about a minute

What it is (LiT-style: the image side is the demo's FROZEN vision tower, only heads on top are trained):
  frame side  the demo's SigLIP-style tower (its `model.safetensors`, last layer, no post-layernorm, as the
              LLaVA adapter runs it) -> tokens 2x2 average-pooled to 8x8 -> attention pooling with a few learned
              probes -> linear -> unit vector (DIM)
  text side   words (lowercase, alphanumeric runs) and word pairs, hashed (crc32) into BUCKETS embeddings ->
              mean (EmbeddingBag) -> 2-layer MLP -> unit vector (DIM)
  loss        SigLIP's pairwise sigmoid loss, learned scale and bias, with a multi-positive label matrix: a text is
              about a frame when the frame shows what the text names (a shape, a colour, both; "any shape" for
              questions that name none).

Texts are the synthetic benchmark's question templates (`synth.question_text`) plus short captions ("a red
square"), so a question scores the frames that show its subject. Trained on frames of training seeds (never test
or needle seeds). Weights: `text_tower.safetensors` (both heads, config in its metadata) beside the demo's weights;
`text_tower_log.json` records the run. The main training script calls `train_text` after it saves the model
(`--text-tower`), since the heads sit on the tower it just trained.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastvid_cli import demo

WEIGHTS_FILE = "text_tower.safetensors"
LOG_FILE = "text_tower_log.json"
BUCKETS = 2048
DIM = 64
WIDTH = 128
PROBES = 4
POOLED = 8  # the tower's 16x16 patch grid, 2x2 average-pooled


# ------------------------------------------------------------------------------------------ text side
def text_buckets(text: str) -> list[int]:
    """Hashed word and word-pair ids of `text` (crc32, stable across runs and platforms)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    return [zlib.crc32(g.encode()) % BUCKETS for g in grams] or [0]


class TextTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(BUCKETS, WIDTH, mode="mean")
        self.mlp = nn.Sequential(nn.LayerNorm(WIDTH), nn.Linear(WIDTH, WIDTH), nn.GELU(), nn.Linear(WIDTH, DIM))

    def forward(self, texts: list[str]) -> torch.Tensor:
        """texts -> (Q, DIM) unit vectors."""
        ids = [text_buckets(t) for t in texts]
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long)
        offsets = torch.tensor(np.cumsum([0] + [len(r) for r in ids[:-1]]), dtype=torch.long)
        dev = self.embed.weight.device
        return F.normalize(self.mlp(self.embed(flat.to(dev), offsets.to(dev))), dim=-1)


class FrameHead(nn.Module):
    """(B, POOLED*POOLED, C) tower tokens -> (B, DIM) unit vectors."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.probes = nn.Parameter(torch.randn(PROBES, channels) * 0.02)
        self.key = nn.Linear(channels, channels)
        self.out = nn.Linear(PROBES * channels, DIM)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(tokens)
        att = torch.softmax(self.probes @ self.key(x).transpose(1, 2) / x.shape[-1] ** 0.5, dim=-1)  # (B,P,N)
        pooled = (att @ x).flatten(1)
        return F.normalize(self.out(pooled), dim=-1)


class Heads(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.text = TextTower()
        self.frame = FrameHead(channels)
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))
        self.bias = nn.Parameter(torch.tensor(-5.0))


# ------------------------------------------------------------------------------------------ frame side
def load_tower(weights: Path):
    """The demo's vision tower (the transformer of a transformers SiglipVisionModel: embeddings, encoder) from its
    model.safetensors, eval mode."""
    from safetensors import safe_open
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = SiglipVisionConfig(**{k: v for k, v in demo.VISION.items() if k != "model_type"})
    # transformers < 5.2x nests the transformer under `.vision_model` (the LLaVA adapter reads it the same way)
    model = SiglipVisionModel(cfg)
    tower = getattr(model, "vision_model", model)
    prefix = "vision_tower."
    with safe_open(str(weights / "model.safetensors"), framework="pt") as st:
        state = {k[len(prefix):]: st.get_tensor(k).float() for k in st.keys() if k.startswith(prefix)}
    state = {k.removeprefix("vision_model."): v for k, v in state.items()}  # either checkpoint layout
    missing, _ = tower.load_state_dict(state, strict=False)
    if [m for m in missing if not m.startswith("head.")]:
        raise ValueError(f"demo vision tower weights lack {missing[:3]}")
    return tower.eval()


def preprocess(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (T,H,W,3) -> (T,3,224,224) float32, the demo's input (bicubic + antialias, mean = std = 0.5)."""
    from fastvid_cli.preprocess import normalize, resize_frames

    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    size = demo.VISION["image_size"]
    return normalize(resize_frames(x.permute(0, 3, 1, 2), (size, size)), [0.5] * 3, [0.5] * 3)


@torch.inference_mode()
def tower_tokens(tower, pixels: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """(T,3,224,224) -> (T, POOLED*POOLED, C): the last layer's output, 2x2 average-pooled."""
    out = []
    g = demo.VISION["image_size"] // demo.VISION["patch_size"]
    for i in range(0, pixels.shape[0], chunk):
        h = tower.embeddings(pixels[i:i + chunk])
        for layer in tower.encoder.layers:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h
        B, P, C = h.shape
        h = F.avg_pool2d(h.transpose(1, 2).reshape(B, C, g, g), 2).flatten(2).transpose(1, 2)
        out.append(h)
    return torch.cat(out)


# ------------------------------------------------------------------------------------------ saved form
def save(path: Path, heads: Heads, channels: int) -> None:
    from safetensors.torch import save_file

    meta = {"config": json.dumps({"buckets": BUCKETS, "dim": DIM, "width": WIDTH, "probes": PROBES,
                                  "pooled": POOLED, "channels": channels})}
    save_file({k: v.detach().float().contiguous() for k, v in heads.state_dict().items()}, str(path), metadata=meta)


def load(path: Path) -> Heads:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as st:
        cfg = json.loads((st.metadata() or {}).get("config", "{}"))
        state = {k: st.get_tensor(k) for k in st.keys()}
    heads = Heads(int(cfg.get("channels", demo.VISION["hidden_size"])))
    heads.load_state_dict(state)
    return heads.eval()


# ------------------------------------------------------------------------------------------ training data
_GENERIC = ("How many shapes appear in the video?", "Which shape appears first?", "Which shape is the last to appear?",
            "What colour is the shape that appears first?", "What colour is the shape that is the last to appear?",
            "Which shape appears after the scene change?", "a shape", "any shape")


def text_pool() -> list[tuple[str, dict]]:
    """Every training text with its subject: {} (any shape), {"shape"}, {"colour"} or both."""
    from fastvid_cli import synth

    out: list[tuple[str, dict]] = [(t, {}) for t in _GENERIC]
    for s in synth.SHAPES:
        out += [(synth.question_text("colour_of_shape", {"shape": s}), {"shape": s}),
                (synth.question_text("colour_change", {"shape": s}), {"shape": s}),
                (f"the {s}", {"shape": s}), (f"a {s}", {"shape": s})]
    for c in synth.COLOURS:
        out += [(synth.question_text("shape_of_colour", {"colour": c}), {"colour": c}),
                (f"the {c} object", {"colour": c}), (f"something {c}", {"colour": c})]
        for s in synth.SHAPES:
            sub = {"colour": c, "shape": s}
            out += [(synth.question_text("direction", sub), sub), (f"a {c} {s}", sub)]
    return out


def _matches(subject: dict, visible: list[tuple[str, str]]) -> bool:
    if not subject:
        return bool(visible)
    return any(subject.get("shape", s) == s and subject.get("colour", c) == c for s, c in visible)


def training_frames(clips: int, per_clip: int, seed_start: int, rng: np.random.Generator):
    """(frames uint8 (N,128,128,3), visible [(shape, colour), ...] per frame) from training seeds; half the clips
    are long needle-style clips (brief objects), half regular ones."""
    from fastvid_cli import synth, synth_needle

    frames, visible = [], []
    for n in range(clips):
        seed = seed_start + n
        if n % 2:
            spec, _ = synth_needle.generate(seed)
        else:
            spec, _ = synth.generate(seed)
        pixels = synth.render(spec)
        ts = rng.choice(spec.frames, size=min(per_clip, spec.frames), replace=False)
        for t in sorted(ts.tolist()):
            frames.append(pixels[t])
            visible.append([(o.shape, o.states[t].colour) for o in spec.objects if o.states[t] is not None])
    return np.stack(frames), visible


def train_text(weights: Path = demo.WEIGHTS, *, clips: int = 800, per_clip: int = 5, steps: int = 1500,
               batch: int = 256, lr: float = 3e-3, seed: int = 0, seed_start: int = 300_000) -> dict:
    """Train the selector heads on the demo at `weights` (its model.safetensors) and save them there."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tower = load_tower(weights)
    frames, visible = training_frames(clips, per_clip, seed_start, rng)
    noisy = np.clip(frames.astype(np.float32) + rng.normal(0, 2.0, frames.shape), 0, 255).astype(np.uint8)
    t_data = time.perf_counter()
    tokens = tower_tokens(tower, preprocess(noisy)).float()
    t_tower = time.perf_counter()
    n = tokens.shape[0]
    held = np.arange(n) % 10 == 0  # every 10th frame is held out
    pool = text_pool()
    labels = torch.tensor([[_matches(sub, vis) for _, sub in pool] for vis in visible], dtype=torch.float32)
    heads = Heads(tokens.shape[-1])
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=1e-4)
    train_idx = np.flatnonzero(~held)
    log = []
    texts = [t for t, _ in pool]
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / 100) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / steps)))
        b = torch.from_numpy(rng.choice(train_idx, size=min(batch, len(train_idx)), replace=False))
        img = heads.frame(tokens[b])
        txt = heads.text(texts)
        logits = img @ txt.T * heads.log_scale.exp() + heads.bias
        loss = F.binary_cross_entropy_with_logits(logits, labels[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps:
            row = {"step": step, "loss": round(loss.item(), 4), **evaluate(heads, tokens[held], labels[held], texts)}
            log.append(row)
            print(json.dumps(row), flush=True)
    heads.eval()
    save(weights / WEIGHTS_FILE, heads, tokens.shape[-1])
    summary = {"clips": clips, "frames": int(n), "held_out_frames": int(held.sum()), "texts": len(texts),
               "steps": steps, "batch": batch, "lr": lr, "seed": seed, "seed_start": seed_start,
               "seconds": {"render": round(t_data - t0, 1), "tower": round(t_tower - t_data, 1),
                           "train": round(time.perf_counter() - t_tower, 1)},
               "torch": torch.__version__, "device": "cpu", "log": log}
    (weights / LOG_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


@torch.no_grad()
def evaluate(heads: Heads, tokens: torch.Tensor, labels: torch.Tensor, texts: list[str]) -> dict:
    """Held-out frames: accuracy of the sigmoid decision, and for each text with positives the share of its
    positive frames ranked above the median negative (a retrieval AUC-like number)."""
    img = heads.frame(tokens)
    txt = heads.text(texts)
    sim = img @ txt.T
    pred = (sim * heads.log_scale.exp() + heads.bias) > 0
    acc = (pred == labels.bool()).float().mean().item()
    aucs = []
    for j in range(len(texts)):
        pos, neg = sim[labels[:, j] > 0, j], sim[labels[:, j] == 0, j]
        if len(pos) and len(neg):
            aucs.append((pos[:, None] > neg[None, :]).float().mean().item())
    return {"held_out_accuracy": round(acc, 4), "held_out_auc": round(float(np.mean(aucs)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(demo.WEIGHTS), help="the demo weights folder (read and written)")
    ap.add_argument("--clips", type=int, default=800)
    ap.add_argument("--per-clip", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    s = train_text(Path(args.out), clips=args.clips, per_clip=args.per_clip, steps=args.steps, seed=args.seed)
    print(f"trained the text tower: {s['steps']} steps, {s['frames']} frames, {s['seconds']}; "
          f"last {s['log'][-1]}")


if __name__ == "__main__":
    main()
