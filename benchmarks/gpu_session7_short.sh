set -u
DEADLINE=${DEADLINE:-210}
source benchmarks/_device.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
step select 170 python3 benchmarks/bench_select.py --decoder cpu --selectors so400m-384 --repeat 3 --out "$O/select.json"
step tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_siglip_scorer.py tests/test_frame_choice.py
for f in "$O"/*.log; do echo "######## $f"; tail -n 40 "$f" | cut -c1-300; done
