#!/usr/bin/env bash
# The session's second device call: NVDEC diagnosis, FlashVID prune after the fix, FlashVID's stage vs FastVID at
# equal layer-average retention, the client overhead and concurrency of `fastvid serve`, and `--select`'s cost.
set -u
source "$(dirname "$0")/_device.sh"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  echo "NVIDIA_DRIVER_CAPABILITIES=${NVIDIA_DRIVER_CAPABILITIES:-unset}"
  ldconfig -p | grep -iE "nvcuvid|nvidia-encode|libcuda\.so" || echo "no libnvcuvid in ldconfig"
  ls /dev/nvidia* 2>&1 | tr '\n' ' '; echo
  python3 - <<'PY'
import av, time
from av.codec.hwaccel import HWAccel, hwdevices_available
print("hwdevices", hwdevices_available())
import glob, sys
sys.path.insert(0, "benchmarks")
from _common import cached_clip
path = cached_clip(60)
for kw in (dict(), dict(allow_software_fallback=False), dict(is_hw_owned=True, allow_software_fallback=False)):
    try:
        t0 = time.perf_counter()
        with av.open(path, hwaccel=HWAccel(device_type="cuda", **kw)) as c:
            s = c.streams.video[0]; n = 0; fmt = None
            for f in c.decode(s):
                fmt = f.format.name; n += 1
                if n >= 30: break
        print(kw, "ok", n, "frames, format", fmt, f"{time.perf_counter() - t0:.3f}s")
    except Exception as e:
        print(kw, "FAILED", type(e).__name__, e)
PY
} > "$O/nvdec_diag.log" 2>&1; cat "$O/nvdec_diag.log"
step prune_flashvid 35 python3 benchmarks/bench_prune_flashvid.py --device cuda --repeat 20 --warmup 5 --scenarios scenes
step serve 110 python3 benchmarks/bench_serve.py --device cuda --model 7b-shaped --repeat 3 --rounds 2 --parts client,concurrency
step flashvid_stage 60 python3 benchmarks/bench_flashvid_stage.py --ratios 0.1 --repeat 2
[ -f benchmarks/bench_select.py ] && step select 100 python3 benchmarks/bench_select.py --repeat 2
grep -hE "^== |goal|fast --json|fast panel|clients:|clients give| graph |ttft|overhead" "$O"/*.log | cut -c1-240 | tail -n 60
