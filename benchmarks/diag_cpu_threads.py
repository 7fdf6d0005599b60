"""Pruning on the CPU with torch's default intra-op threads vs one thread (why engine.small_cpu_work exists).

    python benchmarks/diag_cpu_threads.py     # run it once on a quiet machine and once beside other jobs
"""
import time, torch, sys
from fastvid_cli.pruning.fastvid import fastvid
from fastvid_cli.pruning.holitom import holitom
torch.manual_seed(0); DEF=torch.get_num_threads()
for F,N,D in [(16,64,256),(32,196,896)]:
    X=torch.randn(F,N,D); A=torch.rand(F,N); g=torch.randn(F,D)
    for th in (DEF, 1):
        torch.set_num_threads(th)
        for fn in (fastvid, holitom):
            fn(X,A,g,ratio=0.1)
            ts=[]
            for _ in range(7):
                t=time.perf_counter(); fn(X,A,g,ratio=0.1); ts.append(time.perf_counter()-t)
            ts.sort(); print(F,N,D,fn.__name__,"threads",th, f"median {ts[3]*1e3:.1f} ms max {ts[-1]*1e3:.1f}")
