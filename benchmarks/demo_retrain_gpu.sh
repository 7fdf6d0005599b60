#!/usr/bin/env bash
# Retrain the demo model on one GPU (issue #18): ONE device command, training only, about 9 minutes in all.
#
#     bash benchmarks/demo_retrain_gpu.sh "$OUT" [MINUTES]      # default 8 minutes of training
#
# Written into OUT (flat: the device brings back at most 8 files of <= 16 MiB each):
#   train.log                 one JSON line per 100 steps: phase, losses, auxiliary accuracies, first-token accuracy
#                             per question type, steps/s, data wait; then the final summary lines
#   weights.tgz.part-aa, -ab  the weights folder (fp16 model, saliency head, tokenizer, train_log.json), tar+gzip
#                             cut in 15 MB pieces: cat weights.tgz.part-* | tar xzf -   gives weights/
#   device.txt                GPU name and memory
#   margins_bf16.json         with SEARCH_SECONDS > 0 (default 40): the README-example search of
#                             diag_demo_margins.py on the new weights in bf16 on the GPU (seeds 2000000.., stops
#                             starting seeds after SEARCH_SECONDS), for the goal's bf16-on-GPU margins
#   example_bf16_{readme,eval}.json   the current README example's table in bf16, in both prompt forms (the
#                             tables and the search's printout are appended to train.log: 8 files at most)
# Without .whl (PyAV) the search and the example take their frames from .train_state/decoded/ (made on the CPU by
# diag_demo_margins.py --search 2000000 300 --decode-to .train_state/decoded; ~2 MB, it travels with the state).
#
# One run split over device calls (each ends after 10 minutes; the issue allows 20 minutes of training):
#   CALL_MINUTES=8.5 bash benchmarks/demo_retrain_gpu.sh "$OUT" 17      # MINUTES is then the whole run's budget
# stops after 8.5 minutes and also brings back the training state, state.pt.part-* (fastvid_cli/demo/train_state.py:
# ~34 MB in 3 pieces; then no margin search, the weights only once the run is finished). To go on, put those
# pieces in .train_state/ of the work tree and repeat the command with carry [".train_state"] (the training needs no
# carried wheel; .whl + the state would pass the 64 MiB carry limit): it resumes from them, and the call that
# finishes the run measures the bf16 margins from .train_state/decoded/ (above) in the same call.
# Nothing is evaluated here: the test split is scored on the CPU afterwards (fastvid eval --model DIR/weights).
# The text tower (selector) must then be retrained on the new vision tower: python -m fastvid_cli.demo.text_tower.
set -uo pipefail
DIR=${1:?usage: demo_retrain_gpu.sh OUTDIR [MINUTES]}
MINUTES=${2:-8}
PY=${PYTHON:-python}
# the device calls' preamble: to the repo root, the carried wheels (.whl/, run with carry [".whl"]: PyAV, which the
# margin search needs to render H.264 clips), PYTHONPATH and the offline environment
source "$(dirname "$0")/_device.sh"
mkdir -p "$DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$DIR/device.txt" 2>&1
WORKERS=$(( $(nproc) > 4 ? $(nproc) - 2 : 2 ))
WEIGHTS=$(mktemp -d)/weights
SPLIT=()
if ls .train_state/state.pt.part-* >/dev/null 2>&1; then
    cat .train_state/state.pt.part-* > /tmp/state_in.pt && SPLIT+=(--resume /tmp/state_in.pt)
fi
[ -n "${CALL_MINUTES:-}" ] && SPLIT+=(--call-minutes "$CALL_MINUTES" --state /tmp/state_out.pt)
$PY -m fastvid_cli.demo.train --out "$WEIGHTS" --minutes "$MINUTES" --workers "$WORKERS" "${SPLIT[@]}" \
    > "$DIR/train.log" 2>&1
echo "train exit $? (${SPLIT[*]})" | tee -a "$DIR/train.log"
FINISHED=$($PY -c "import json,sys; print(int(json.load(open(sys.argv[1]))['finished']))" \
    "$WEIGHTS/train_log.json" 2>/dev/null || echo 0)
if [ -f /tmp/state_out.pt ] && [ "$FINISHED" != 1 ]; then
    # not finished: the state is what comes back, not the weights (the device brings back at most 8 files)
    split -b 15000000 /tmp/state_out.pt "$DIR/state.pt.part-"
    rm -rf "$WEIGHTS"
fi
DECODED=()
if [ ! -d .whl ]; then
    if [ -d .train_state/decoded ]; then
        # no PyAV here (its wheel cannot travel beside the state): the clips were sampled on the CPU beforehand
        # (diag_demo_margins.py --decode-to .train_state/decoded); a stand-in module lets fastvid_cli import
        DECODED=(--decoded .train_state/decoded)
        mkdir -p /tmp/avstub/av
        printf 'from . import error, stream\n__version__ = "absent (frames decoded beforehand)"\n' > /tmp/avstub/av/__init__.py
        printf 'class FFmpegError(Exception):\n    pass\n' > /tmp/avstub/av/error.py
        printf 'class Disposition:\n    attached_pic = 1024\n' > /tmp/avstub/av/stream.py
        export PYTHONPATH="$PYTHONPATH:/tmp/avstub"
    else
        SEARCH_SECONDS=0  # the search renders H.264 clips: PyAV, a carried wheel
    fi
fi
if [ -d "$WEIGHTS" ]; then
    tar czf - -C "$(dirname "$WEIGHTS")" weights | split -b 15000000 - "$DIR/weights.tgz.part-"
    ls -l "$WEIGHTS" "$DIR"
fi
# the end of training on stdout: steps, speed, and per question type the first-token accuracy of the last 3 log rows
$PY - "$DIR/train.log" <<'EOF' | tee -a "$DIR/train.log"
import json, sys
rows = []
for line in open(sys.argv[1]):
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        continue
    if isinstance(row, dict) and "step" in row:
        rows.append(row)
if not rows:
    sys.exit("no training log rows")
joint = [r for r in rows if r.get("phase") == "joint"]
tail = joint[-3:] or rows[-3:]
mean = lambda key, rs=tail: round(sum(r[key] for r in rs if key in r) / max(1, sum(key in r for r in rs)), 3)
vision = [r for r in rows if r.get("phase") == "vision"]
print(f"steps {rows[-1]['step']} ({len(vision) * 100} vision-only) in {rows[-1]['minutes']} min; steps/s "
      f"vision {mean('steps_per_s', vision[1:] or vision)} joint {mean('steps_per_s', joint[1:] or joint)}")
print("last 3 rows: " + " ".join(f"{k} {mean(k)}" for k in (
    "first_token_acc", "qa_loss", "patch_shape_acc", "cell_shape_acc", "cell_moving_acc", "cell_rank_acc")
    if any(k in r for r in tail)))
if "by_type" in tail[-1]:
    types = tail[-1]["by_type"]
    print("by type: " + " ".join(f"{t} {sum(r['by_type'][t] for r in tail) / len(tail):.3f}" for t in types))
EOF
if [ "${SEARCH_SECONDS:-40}" != 0 ] && [ -d "$WEIGHTS" ]; then
    for form in readme eval; do  # the README example as it is now, in both prompt forms (first: short)
        NL=(); [ $form = eval ] && NL=(--newline)
        timeout 60 $PY benchmarks/diag_demo_margins.py --model "$WEIGHTS" --device cuda --dtype bfloat16 \
            "${DECODED[@]}" "${NL[@]}" --json "$DIR/example_bf16_$form.json" 2>&1 | tee -a "$DIR/train.log" \
            | grep "min margin"
    done
    timeout $(( ${SEARCH_SECONDS:-40} + 60 )) $PY benchmarks/diag_demo_margins.py --search 2000000 400 \
        --seconds "${SEARCH_SECONDS:-40}" --model "$WEIGHTS" --device cuda --dtype bfloat16 \
        "${DECODED[@]}" --json "$DIR/margins_bf16.json" > /tmp/margins_bf16.log 2>&1
    echo "margin search exit $?"; cat /tmp/margins_bf16.log >> "$DIR/train.log"
    grep -E "candidate|best of|no candidate" /tmp/margins_bf16.log | tail -12
fi
