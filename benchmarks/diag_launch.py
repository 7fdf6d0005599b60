"""How expensive is a kernel launch on this host, and how much of FastVID's prune time is GPU work?

    python benchmarks/diag_launch.py
"""
import sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastvid_cli.pruning.fastvid import fastvid  # noqa: E402

x = torch.zeros(16, device="cuda")
for _ in range(100):
    x.add_(1)
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(2000):
    x.add_(1)
torch.cuda.synchronize()
print(f"host cost per tiny kernel launch: {(time.perf_counter() - t) / 2000 * 1e6:.1f} us")

g = torch.Generator().manual_seed(0)
F, N, D = 32, 196, 3584
emb = torch.randn(F, N, D, generator=g).cuda().bfloat16()
sal = torch.rand(F, N, generator=g).cuda().bfloat16()
base = torch.randn(1152, generator=g)
feats = torch.stack([base + 0.3 * torch.randn(1152, generator=g) * (1 + 5 * (i % 4 == 0)) for i in range(F)]).cuda().bfloat16()
for _ in range(10):
    r = fastvid(emb, sal, feats, ratio=0.1)
torch.cuda.synchronize()
from torch.profiler import profile, ProfilerActivity  # noqa: E402
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(20):
        r = fastvid(emb, sal, feats, ratio=0.1)
    torch.cuda.synchronize()
ev = prof.key_averages()
gpu_us = sum(e.self_device_time_total for e in ev) / 20
launches = sum(e.count for e in ev if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")) / 20
print(f"prune 32x196x3584 (segments {r.segments}): GPU kernel time {gpu_us / 1e3:.3f} ms per call, "
      f"{launches:.0f} kernel launches per call")
t = time.perf_counter()
for _ in range(50):
    r = fastvid(emb, sal, feats, ratio=0.1)
torch.cuda.synchronize()
print(f"wall per call {(time.perf_counter() - t) / 50 * 1e3:.3f} ms")
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
