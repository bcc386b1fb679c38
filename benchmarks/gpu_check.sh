#!/usr/bin/env bash
# The GPU check of issue 26, ready for the day a CUDA device is lent. From the repository root:
#
#     bash benchmarks/gpu_check.sh            # PYTHON=.venv/bin/python, LRPROF=its lrprof by default
#
# Steps, each under its own timeout (7.5 minutes in all, inside the 8 the issue allows):
#   1. pytest -m cuda                                                    (90 s)
#   2. the Triton kernels at B=32 in float32, float16, bfloat16 against unfold and the copy
#      roofline (benchmarks/lr_impls.py --device cuda --batch 32 --dtype ...)  (3 x 60 s)
#   3. the default layer: lrprof layer --k 7 --m 8 --device cuda          (60 s)
#   4. lrprof net lr50 --impl triton --vs resnet50 --device cuda         (90 s)
# Every report and log goes under reports/cuda-<device name slug>/; a step that fails or
# times out is reported and the others still run; the exit status is the number of failed
# steps (0: all ran). Without CUDA it prints one refusal line and exits 2.
set -u
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
LRPROF=${LRPROF:-"$(dirname "$PYTHON")/lrprof"}
[ -x "${LRPROF%% *}" ] || LRPROF=lrprof

name=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' \
       2>/dev/null)
if [ -z "$name" ]; then
    echo "gpu_check: refused: no CUDA device visible to torch (torch.cuda.is_available() is False); nothing run"
    exit 2
fi
slug=$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9' '-' | sed 's/--*/-/g; s/^-//; s/-$//')
out="reports/cuda-$slug"
mkdir -p "$out"
summary="$out/summary.txt"
echo "gpu_check on $name ($(date -u +%Y-%m-%dT%H:%M:%SZ)); reports in $out" | tee "$summary"
failed=0

step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to $out/NAME.log
    local label=$1 limit=$2
    shift 2
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$out/$label.log" 2>&1
    local rc=$?
    local verdict="ok"
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then verdict="timed out after ${limit} s"; elif [ $rc -ne 0 ]; then verdict="failed (exit $rc)"; fi
    [ "$verdict" = "ok" ] || failed=$((failed + 1))
    echo "$label: $verdict in $((SECONDS - started)) s ($out/$label.log)" | tee -a "$summary"
}

step pytest-cuda 90 "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider
for dtype in float32 float16 bfloat16; do
    step "triton-$dtype" 60 "$PYTHON" benchmarks/lr_impls.py --device cuda --batch 32 --dtype "$dtype" \
        --impl unfold,triton --min-runs 10 --out "$out/triton-$dtype"
done
# shellcheck disable=SC2086
step layer-default 60 $LRPROF layer --k 7 --m 8 --device cuda --out "$out/layer-default" --no-plots
# shellcheck disable=SC2086
step net-lr50-vs-resnet50 90 $LRPROF net lr50 --impl triton --vs resnet50 --device cuda \
    --out "$out/net-lr50" --no-plots
echo "gpu_check: $failed step(s) failed or timed out" | tee -a "$summary"
exit "$failed"
