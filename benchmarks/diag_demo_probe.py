"""Issue #18 diagnosis: can the demo's vision tower tell the shapes apart at all? (CPU, minutes, 1 thread)

    OMP_NUM_THREADS=1 python benchmarks/diag_demo_probe.py --minutes 4

Trains the demo's SigLIP-style tower (random init, demo.VISION sizes) with a linear head on the per-patch shape
labels of train_data.clip_targets (shape of the object covering each patch centre, 0 = background) on single frames of
training clips, and reports on held-out frames (seeds 900_000 on, never trained on):
  fg_acc        shape accuracy over the patches whose centre lies on an object (chance ~25 %), split into
                edge_acc (the patch also holds background pixels: its edge is visible to the patch itself) and
                inner_acc (a flat patch: its shape must be read from the other patches, through attention),
  pooled_acc    the same read from the 2x2 bilinear-pooled grid (8x8, what the LLM receives) by a second linear
                head on the pooled tower features, on pooled cells that lie on an object,
  object_acc    per object: the majority vote of its patches (what a shape question needs).
"""

from __future__ import annotations

import argparse
import random
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from fastvid_cli import demo, synth, synth_scene
from fastvid_cli.demo import train_data


def cover_labels(spec, pix, t, grid, min_share):
    """(grid, grid) shape index + 1 of the object covering the largest share of each patch's pixels, if that share
    is >= min_share (else 0): an edge patch is labelled with the shape whose edge it shows."""
    H = spec.height
    s = H // grid
    ids = np.zeros((H, H), np.int64)
    for obj in spec.objects:
        st = obj.states[t]
        if st is None:
            continue
        yy, xx = np.mgrid[0:H, 0:H]
        ids[synth._shape_mask(obj.shape, xx - st.x, yy - st.y, obj.radius)] = synth.SHAPES.index(obj.shape) + 1
    blocks = ids.reshape(grid, s, grid, s).transpose(0, 2, 1, 3).reshape(grid, grid, s * s)
    counts = np.stack([(blocks == k).sum(-1) for k in range(len(synth.SHAPES) + 1)], -1)
    counts[..., 0] = 0
    best = counts.argmax(-1)
    return np.where(counts.max(-1) >= min_share * s * s, best, 0)


def frames_batch(seeds, rng, grid, pooled, size, cover=0.0):
    xs, ps, qs, es = [], [], [], []
    for seed in seeds:
        spec, _ = synth.generate(int(seed))
        pix = synth.render(spec)
        _, patch, motion = train_data.clip_targets(spec, grid, pooled)
        _, cell, _ = train_data.clip_targets(spec, pooled, pooled)
        ts = [t for t in range(spec.frames) if patch[t, 0].any()]
        t = rng.choice(ts)
        xs.append(pix[t])
        ps.append(cover_labels(spec, pix, t, grid, cover) if cover else patch[t, 0])
        qs.append(cover_labels(spec, pix, t, pooled, cover) if cover else cell[t, 0])
        # boundary patches: the patch's block of clip pixels holds both background and object pixels
        bg = np.all(pix[t] == synth_scene._RGB[spec.background_at(t)], -1)
        s = spec.height // grid
        frac = bg.reshape(grid, s, grid, s).mean((1, 3))
        es.append((frac > 0) & (frac < 1))
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = (x.clamp(0, 255) / 255.0 - 0.5) / 0.5
    labels = [torch.from_numpy(np.stack(v)).flatten(1) for v in (ps, qs, es)]
    return x, *labels


def pca_init(conv, size, rng, n_clips=64, eps=1e-2):
    """Whitened PCA of training frames' patches as the patch embedding (weights and bias)."""
    x, *_ = frames_batch(range(700_000, 700_000 + n_clips), rng, 16, 8, size)
    ps = conv.kernel_size[0]
    p = x.unfold(2, ps, ps).unfold(3, ps, ps).permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(0, 2).double()
    mean = p.mean(0)
    cov = torch.cov((p - mean).T)
    val, vec = torch.linalg.eigh(cov)
    val, vec = val.flip(0)[:conv.out_channels], vec.flip(1)[:, :conv.out_channels]
    w = (vec / (val + eps * val[0]).sqrt()).T  # (out, in)
    with torch.no_grad():
        conv.weight.copy_(w.reshape(conv.weight.shape).float())
        conv.bias.copy_(-(w @ mean).float())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--layers", type=int, default=demo.VISION["num_hidden_layers"])
    ap.add_argument("--cover", type=float, default=0.0,
                    help="train on coverage labels: a patch takes the shape covering >= this share of its pixels "
                         "(0: the label at the patch centre, as train_data.clip_targets)")
    ap.add_argument("--init", choices=["default", "pca", "zero-residual"], default="default",
                    help="pca: the patch embedding starts as the whitened principal components of training patches; "
                         "zero-residual: each layer's attention output and MLP output projections start at zero")
    ap.add_argument("--arch", choices=["tower", "mlp"], default="tower",
                    help="mlp: a 2-layer MLP on each patch's own pixels instead of the tower (no context at all)")
    ap.add_argument("--eval-every", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = SiglipVisionConfig(**{k: v for k, v in demo.VISION.items() if k != "model_type"})
    cfg.num_hidden_layers = args.layers
    tower = SiglipVisionModel(cfg)
    if args.arch == "mlp":
        ps = cfg.patch_size
        mlp = torch.nn.Sequential(torch.nn.Linear(3 * ps * ps, cfg.hidden_size), torch.nn.GELU(),
                                  torch.nn.Linear(cfg.hidden_size, cfg.hidden_size), torch.nn.GELU())

        def tower(x, output_hidden_states=True):  # noqa: F811 - same interface as the tower's call
            p = x.unfold(2, ps, ps).unfold(3, ps, ps).permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)
            return type("Out", (), dict(hidden_states=[mlp(p)]))

        tower.parameters = mlp.parameters
        tower.train = mlp.train
        tower.eval = mlp.eval
    size, grid = cfg.image_size, cfg.image_size // cfg.patch_size
    if args.init == "pca":
        pca_init(tower.embeddings.patch_embedding, size, random.Random(1))
    if args.init == "zero-residual":
        from fastvid_cli.demo.train import zero_residual

        zero_residual(tower)
    pooled = math.ceil(grid / 2)
    head = torch.nn.Linear(cfg.hidden_size, len(synth.SHAPES) + 1)
    head_pooled = torch.nn.Linear(cfg.hidden_size, len(synth.SHAPES) + 1)
    params = [*tower.parameters(), *head.parameters(), *head_pooled.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    rng = np.random.default_rng(0)
    prng = random.Random(0)
    val = frames_batch(range(900_000, 900_064), prng, grid, pooled, size)

    def forward(x):
        h = tower(x, output_hidden_states=True).hidden_states[-1]
        g = h.view(h.shape[0], grid, grid, -1).permute(0, 3, 1, 2)
        p = F.interpolate(g, size=(pooled, pooled), mode="bilinear").flatten(2).transpose(1, 2)
        return head(h), head_pooled(p)

    def evaluate():
        tower.eval()
        with torch.no_grad():
            lp, lq = forward(val[0])
        tower.train()
        yp, yq = val[1], val[2]
        fg, fq = yp > 0, yq > 0
        pred = lp.argmax(-1)
        edge = val[3] & fg
        inner = fg & ~val[3]
        out = dict(fg_acc=(pred[fg] == yp[fg]).float().mean().item(),
                   edge_acc=(pred[edge] == yp[edge]).float().mean().item(),
                   inner_acc=(pred[inner] == yp[inner]).float().mean().item(),
                   pooled_acc=(lq.argmax(-1)[fq] == yq[fq]).float().mean().item())
        return {k: round(v, 3) for k, v in out.items()}

    t0, step = time.perf_counter(), 0
    seed = 0
    while time.perf_counter() - t0 < args.minutes * 60:
        x, yp, yq, _ = frames_batch(range(seed, seed + args.batch), prng, grid, pooled, size, args.cover)
        seed += args.batch
        lp, lq = forward(x + torch.randn_like(x) * 0.016)
        w = torch.ones(len(synth.SHAPES) + 1)
        w[0] = 0.2  # background is ~90 % of the patches
        loss = F.cross_entropy(lp.transpose(1, 2), yp, weight=w) + F.cross_entropy(lq.transpose(1, 2), yq, weight=w)
        lr = args.lr * min(1.0, (step + 1) / 30)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % args.eval_every == 0:
            print(json.dumps(dict(step=step, s=round(time.perf_counter() - t0), loss=round(loss.item(), 3),
                                  **evaluate())), flush=True)
    print(json.dumps(dict(final=True, step=step, **evaluate())))


if __name__ == "__main__":
    main()
