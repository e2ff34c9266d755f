#!/usr/bin/env bash
# featlift's first run on a GPU, in one go: a short window on a machine with CUDA and the packages
# installed, possibly without a network. Runs from the repository as it is (PYTHONPATH=src, no pip
# install), in under 8 minutes by default, and writes one report file (markdown) with every step's
# command, exit code, duration and output, the benchmarks' JSON, and a summary table at the end.
#
#   bash benchmarks/gpu_check.sh                                   # report: ./gpu_check_report.md
#   bash benchmarks/gpu_check.sh --uplift-root ../UPLiFT --out /tmp/report.md
#   bash benchmarks/gpu_check.sh --only upsampler,official         # a subset, by step name
#   bash benchmarks/gpu_check.sh --dry-run                         # on the CPU: proves every step starts
#
# Steps, in order (each under its own timeout, and all within --budget seconds; a step the budget
# cannot fit any more is recorded as skipped):
#   environment      torch, CUDA, the GPUs, Triton, featlift; nvidia-smi
#   gpu-tests        python -m pytest -m gpu (the compiled Triton kernel, half precision, torch.compile)
#   attend-float32   benchmarks/bench_attend.py --device cuda: the Triton kernel against the fused path
#   attend-bfloat16    and the reference, with the bandwidth it reaches, in float32 and bfloat16
#   upsampler        benchmarks/bench_upsampler.py: float32 and bfloat16 at 448 and 2048 px, peak memory
#   official         benchmarks/bench_official.py: the official UPLiFT code's fast mode on the same work
#                    (one 2x step, DINOv2-S/14, 448 px, bf16) when --uplift-root names a checkout of it;
#                    "not found" (exit code 0) otherwise
#   roofline         benchmarks/bench_roofline.py --device cuda --profile: matmul rates as the roofline
#
# --dry-run hides the GPUs (CUDA_VISIBLE_DEVICES=) and starts every step for real on the CPU at tiny
# sizes: pytest collects and skips the gpu tests, each benchmark runs once. tests/test_gpu_check.py
# runs it. The exit status is 0 when every step exited 0, else 1.
#
# Environment: PYTHON (default: python, else python3) runs every step.

set -u -o pipefail

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    cat <<'EOF'
Options:
  --out FILE           the report (default: gpu_check_report.md in the current directory)
  --uplift-root DIR    a checkout of the official UPLiFT code (also accepted as the only positional argument)
  --budget SECONDS     the whole run's limit (default 450)
  --step-timeout S     cap every step's own timeout at S seconds
  --only A,B           run only the named steps
  --dry-run            on the CPU, tiny sizes: proves every step starts
EOF
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0
OUT="gpu_check_report.md"
UPLIFT_ROOT=""
BUDGET=450
CAP=""
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT="${2:?--out needs a file}"; shift ;;
        --uplift-root) UPLIFT_ROOT="${2:?--uplift-root needs a folder}"; shift ;;
        --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
        --step-timeout) CAP="${2:?--step-timeout needs seconds}"; shift ;;
        --only) ONLY="${2:?--only needs step names}"; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) UPLIFT_ROOT="$1" ;;
    esac
    shift
done

case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
if ! mkdir -p "$(dirname "$OUT")" || ! : >"$OUT"; then
    echo "gpu_check.sh: cannot write the report $OUT" >&2
    exit 2
fi
if [ -n "$UPLIFT_ROOT" ]; then
    case "$UPLIFT_ROOT" in /*) ;; *) UPLIFT_ROOT="$PWD/$UPLIFT_ROOT" ;; esac
fi
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO" || exit 2
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
SUMMARY="$WORK/summary"
: >"$SUMMARY"
START=$(date +%s)
FAILED=0

if [ "$DRY_RUN" = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""
    MODE="dry run: CPU only, tiny sizes; proves that every step starts"
else
    MODE="full run on CUDA"
fi

{
    echo "# featlift GPU check"
    echo
    echo "- mode: $MODE"
    echo "- started: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname 2>/dev/null || echo unknown)"
    echo "- repository: $REPO, commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
    echo "- python: $(command -v "$PYTHON" || echo "$PYTHON"), PYTHONPATH=$PYTHONPATH"
    echo "- budget: ${BUDGET}s; official UPLiFT code: ${UPLIFT_ROOT:-none given}"
} >"$OUT"

wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# step NAME TIMEOUT COMMAND...: run COMMAND under min(TIMEOUT, --step-timeout, what the budget has
# left), echo its output, and append its section (command, exit code, output, JSON) to the report.
step() {
    local name="$1" limit="$2"
    shift 2
    wanted "$name" || return 0
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 0 ]; then left=0; fi  # a step that began past the budget has none left, not less
    if [ -n "$CAP" ] && [ "$CAP" -lt "$limit" ]; then limit="$CAP"; fi
    if [ "$left" -lt "$limit" ]; then limit="$left"; fi
    {
        echo
        echo "## $name"
        echo
        # shellcheck disable=SC2016  # the backquotes are markdown
        printf 'command: `%s`\n' "$*"
    } >>"$OUT"
    if [ "$left" -lt 5 ]; then
        echo "result: skipped, ${left}s of the budget left" >>"$OUT"
        echo "| $name | skipped | 0 | 0 |" >>"$SUMMARY"
        echo "== $name: skipped (budget spent)"
        FAILED=1
        return 0
    fi
    echo "== $name (timeout ${limit}s): $*"
    local log="$WORK/$name.log" t0 rc seconds note=""
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    seconds=$(($(date +%s) - t0))
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then note=" (timed out after ${limit}s)"; fi
    [ "$rc" = 0 ] || FAILED=1
    {
        echo "exit code: $rc$note; ${seconds}s"
        echo
        echo '```text'
        tail -n 3000 "$log"
        echo '```'
        if [ -s "$WORK/$name.json" ]; then
            echo
            echo '```json'
            cat "$WORK/$name.json"
            echo
            echo '```'
        fi
    } >>"$OUT"
    echo "| $name | $rc | $seconds | $limit |" >>"$SUMMARY"
    echo "== $name: exit code $rc$note, ${seconds}s"
}

ENVIRONMENT="$WORK/environment.py"
cat >"$ENVIRONMENT" <<'PY'
import platform, sys
import torch
import featlift
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), featlift {featlift.__version__}")
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError:
    print("triton: not installed")
print(f"CPU: {platform.processor() or platform.machine()}, featlift.cpu_supports_bf16() {featlift.cpu_supports_bf16()}")
print(f"CUDA available: {torch.cuda.is_available()}, {torch.cuda.device_count()} device(s)")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}")
if "--need-cuda" in sys.argv and not torch.cuda.is_available():
    sys.exit("no CUDA device: every GPU step below will fail or skip")
PY
ROOT_ARGS=()
[ -n "$UPLIFT_ROOT" ] && ROOT_ARGS=(--uplift-root "$UPLIFT_ROOT")

if [ "$DRY_RUN" = 1 ]; then
    step environment 60 "$PYTHON" "$ENVIRONMENT"
    step gpu-tests 120 "$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider
    for dtype in float32 bfloat16; do
        step "attend-$dtype" 60 "$PYTHON" benchmarks/bench_attend.py --device cpu --dtype "$dtype" \
            --coarse 8 --channels 16 --repeats 1 --json "$WORK/attend-$dtype.json"
    done
    step upsampler 120 "$PYTHON" benchmarks/bench_upsampler.py --device cpu --sizes 28 --iters 1 \
        --variants featlift --dtypes bfloat16 --repeats 1 --json "$WORK/upsampler.json"
    step official 120 "$PYTHON" benchmarks/bench_official.py ${ROOT_ARGS[@]+"${ROOT_ARGS[@]}"} --device cpu --size 28 \
        --repeats 1 --warmup 1 --no-compile --json "$WORK/official.json"
    step roofline 120 "$PYTHON" benchmarks/bench_roofline.py --device cpu --size 28 --iters 1 \
        --matmul-size 64 --repeats 1 --variants featlift --profile --profile-rows 5 --json "$WORK/roofline.json"
else
    # shellcheck disable=SC2016  # expanded by the inner bash: $1 is the python, $2 the script
    step environment 60 bash -c '"$1" "$2" --need-cuda; rc=$?; nvidia-smi || echo "nvidia-smi: not available"
        exit $rc' environment "$PYTHON" "$ENVIRONMENT"
    step gpu-tests 180 "$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider
    for dtype in float32 bfloat16; do
        step "attend-$dtype" 60 "$PYTHON" benchmarks/bench_attend.py --device cuda --dtype "$dtype" \
            --json "$WORK/attend-$dtype.json"
    done
    step upsampler 150 "$PYTHON" benchmarks/bench_upsampler.py --device cuda --sizes 448 2048 \
        --variants featlift convs --dtypes float32 bfloat16 --repeats 5 --json "$WORK/upsampler.json"
    step official 150 "$PYTHON" benchmarks/bench_official.py ${ROOT_ARGS[@]+"${ROOT_ARGS[@]}"} --device cuda --size 448 \
        --dtype bfloat16 --json "$WORK/official.json"
    step roofline 90 "$PYTHON" benchmarks/bench_roofline.py --device cuda --size 448 --repeats 5 --profile \
        --json "$WORK/roofline.json"
fi

{
    echo
    echo "## Summary"
    echo
    echo "| step | exit code | seconds | timeout (s) |"
    echo "| --- | ---: | ---: | ---: |"
    cat "$SUMMARY"
    echo
    echo "total: $(($(date +%s) - START))s; $([ "$FAILED" = 0 ] && echo 'every step exited 0' || echo 'some steps failed, timed out or were skipped')"
} >>"$OUT"
echo "report: $OUT"
exit "$FAILED"
