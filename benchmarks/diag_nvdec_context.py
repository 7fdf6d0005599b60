"""NVDEC after torch has the GPU: times 32-frame sampling of the 60 s 720p clip on the CPU and with NVDEC, and the
frames' largest difference. python benchmarks/diag_nvdec_context.py (CUDA + PyAV with NVDEC)."""
import sys, time, statistics
sys.path.insert(0, "benchmarks")
from _common import cached_clip
from fastvid_cli import video_gpu
print("share:", video_gpu.share_primary_context(0))
import torch
torch.zeros(1, device="cuda")
path = cached_clip(60)
print(video_gpu.nvdec_status(0))
dev = torch.device("cuda:0")
for kind in ("cpu", "gpu", "cpu", "gpu"):
    ts = []
    for _ in range(4):
        notes = []
        torch.cuda.synchronize(); t0 = time.perf_counter()
        clip = video_gpu.sample_clip(path, 32, decoder=kind, device=dev, notes=notes)
        torch.cuda.synchronize(); ts.append((time.perf_counter() - t0) * 1e3)
    print(kind, clip.decoder, notes, "median ms", round(statistics.median(ts), 1), [round(t, 1) for t in ts], flush=True)
    if kind == "cpu": ref = clip
    else:
        g = clip.frames.cpu().to(torch.int16) if torch.is_tensor(clip.frames) else torch.from_numpy(clip.frames).to(torch.int16)
        c = torch.from_numpy(ref.frames).to(torch.int16) if not torch.is_tensor(ref.frames) else ref.frames.cpu().to(torch.int16)
        d = (g - c).abs()
        print("indices equal", list(clip.indices) == list(ref.indices), "max diff", int(d.max()), "mean", float(d.float().mean()))
