#!/usr/bin/env bash
# Retrain the demo model on one GPU and score it (issue #18), everything written under one folder:
#
#     bash benchmarks/demo_retrain_gpu.sh "$OUT" [MINUTES]      # default 11 minutes of training
#
# DIR/weights/       the new weights (~14 MB: fp16 model + saliency head + tokenizer + train_log.json)
# DIR/train.log      one JSON line per 100 steps: losses, first-token accuracy per question type, steps/s, data wait
# DIR/eval_{mc,short}.json / .jsonl / .err   `fastvid eval --json` on all 512 test questions: none@1 (reference),
#                    fastvid@0.1, uniform@0.1; the per-answer records; the progress/stderr
# DIR/summary.txt    the compact table (also printed); DIR/DONE when everything finished
#
# The new weights are also copied over fastvid_cli/demo/weights of this checkout, so `--model demo` evaluates them
# through the alias exactly as users will run it. The test clips are rendered and H.264-encoded from their seeds
# once (in the background while training runs) and shared by both evals, which run side by side.
set -uo pipefail
DIR=${1:?usage: demo_retrain_gpu.sh OUTDIR [MINUTES]}
MINUTES=${2:-11}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
mkdir -p "$DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
VIDEOS="$DIR/videos"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$DIR/device.txt" 2>&1
(nice $PY -c "from fastvid_cli import synth; print(synth.materialize(synth.shipped_split_path(), '$VIDEOS'))" \
    > "$DIR/materialize.log" 2>&1) &
MAT=$!
WORKERS=$(( $(nproc) > 4 ? $(nproc) - 2 : 2 ))
$PY -m fastvid_cli.demo.train --out "$DIR/weights" --minutes "$MINUTES" --workers "$WORKERS" > "$DIR/train.log" 2>&1
echo "train exit $?" >> "$DIR/train.log"
wait $MAT
cp "$DIR"/weights/*.safetensors "$DIR"/weights/*.json fastvid_cli/demo/weights/
for form in mc short; do
    $PY -m fastvid_cli eval fastvid_cli/data/synth_test.jsonl --model demo --device cuda --form $form \
        --method fastvid --method uniform --ratio 0.1 --videos-root "$VIDEOS" --no-cache \
        -o "$DIR/eval_$form.jsonl" --json > "$DIR/eval_$form.json" 2> "$DIR/eval_$form.err" &
done
wait
rm -rf "$VIDEOS"  # 512 small mp4s: regenerated from their seeds on demand, not worth bringing back
$PY benchmarks/demo_retrain_summary.py "$DIR" | tee "$DIR/summary.txt"
touch "$DIR/DONE"
