#!/usr/bin/env bash
# After benchmarks/demo_retrain_gpu.sh (issue #18), on the CPU: unpack the weights it brought back, score them on
# all 512 test questions in both forms (none@1, fastvid@0.1, uniform@0.1 by default; the two forms side by side, one
# thread each), retrain the demo's text tower on the new vision tower, and print the summary.
#
#     bash benchmarks/demo_after_retrain.sh GPU_OUT_DIR [VIDEOS_ROOT]
#
# GPU_OUT_DIR holds train.log and weights.tgz.part-*; the weights land in GPU_OUT_DIR/weights. VIDEOS_ROOT: where the
# test split's clips are (rendered once from their seeds if missing; default GPU_OUT_DIR/synth).
# TABLE=1: the whole method table of the methods issue instead (fastvid holitom holitom-orig flashvid vidcom2 evs
# uniform at 0.25 and 0.1, ~55 min for both forms on a 2-core CPU); or METHODS="…" / RATIOS="…" of your own.
set -euo pipefail
DIR=${1:?usage: demo_after_retrain.sh GPU_OUT_DIR [VIDEOS_ROOT]}
VIDEOS=${2:-$DIR/synth}
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
[ -d "$DIR/weights" ] || (cd "$DIR" && cat weights.tgz.part-* | tar xzf -)
$PY -c "from fastvid_cli import synth; print(synth.materialize(synth.shipped_split_path(), '$VIDEOS'))"
if [ -n "${TABLE:-}" ]; then
    METHODS=${METHODS:-"fastvid holitom holitom-orig flashvid vidcom2 evs uniform"} RATIOS=${RATIOS:-"0.25 0.1"}
fi
SETTINGS=()
for m in ${METHODS:-fastvid uniform}; do SETTINGS+=(--method "$m"); done
for r in ${RATIOS:-0.1}; do SETTINGS+=(--ratio "$r"); done
for form in mc short; do
    $PY -m fastvid_cli eval fastvid_cli/data/synth_test.jsonl --model "$DIR/weights" --device cpu --threads 1 \
        --form $form "${SETTINGS[@]}" --videos-root "$VIDEOS" --no-cache \
        -o "$DIR/eval_$form.jsonl" --json > "$DIR/eval_$form.json" 2> "$DIR/eval_$form.err" &
done
wait
$PY benchmarks/demo_retrain_summary.py "$DIR" | tee "$DIR/summary.txt"
$PY -m fastvid_cli.demo.text_tower --out "$DIR/weights" | tail -3
