# Sourced by the benchmarks/gpu_*.sh device calls: install the carried wheels (.whl/: PyAV, FastAPI, uvicorn, ...
# which the GPU machine lacks), set the environment, make $O (= $OUT, the folder that comes back) and define
# `step NAME LIMIT CMD...` (runs CMD under `timeout LIMIT`, its output in $O/NAME.log, prints "== NAME rc=… s").
# With DEADLINE (seconds) set before sourcing, each step also gets at most what is left of it and is skipped near it.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
O=${OUT:-/tmp/out}; mkdir -p "$O"
END=$((SECONDS + ${DEADLINE:-100000}))
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS left=$((END - SECONDS))
  [ "$left" -lt 20 ] && { echo "== $name skipped (deadline)"; return; }
  [ "$limit" -gt "$left" ] && limit=$left
  timeout "$limit" "$@" > "$O/$name.log" 2>&1; echo "== $name rc=$? $((SECONDS - t0)) s"; }
