#!/usr/bin/env bash
# Every GPU check of issue 4 in one command, from the repository root of a CUDA host:
#
#     bash bench/gpu_all.sh                 # all stages, within GPU_ALL_BUDGET_S (default 560 s)
#     bash bench/gpu_all.sh cold kbench     # chosen stages (env always runs first)
#
# Stages, in this order (the default runs them all while the time budget lasts; a stage cut short or
# skipped is named in the summary, with the command that runs it alone; expect gpu + cold to fill
# one 10-minute device call and `bash bench/gpu_all.sh kernels kbench` to need a second):
#   env      GPU, versions; makes c2cq importable without installing it (a symlinked package under
#            /tmp/c2cq-pkg on PYTHONPATH; commands run outside the repo root so ./c2cq does not shadow it);
#            installs missing pure dependencies from ./.whl if that folder was carried (see below)
#   gpu      python -m pytest tests/gpu            (cuda backend == cpu backend, residency, pinning)
#   cold     python bench/cold_start_gpu.py        (switch → first token vs safetensors → GPU, 0.5B–8B;
#                                                   COLD_ARGS="--sizes qwen2-0.5b llama-3.1-8b" to choose)
#   kernels  python -m pytest tests/kernels        (HybridGEMM compiled, every test on the GPU)
#   kbench   python -m c2cq.kernels.bench --quick  (KBENCH_ARGS="" for the full table)
# Logs, tables and JSON go to $OUT when it is set (the device tool brings $OUT back; 7 files, under its
# limit of 8), else ./out/gpu. GPU_ALL_DRY=1 runs the stages without a GPU (to check this script).
#
# Needs: python3 with torch (CUDA), triton, safetensors, tokenizers, transformers, tqdm, pytest, and
# msgspec, structlog, pyzmq. The device image lacks the last three; carry them as wheels. Once, on the
# development machine, in the repository root:
#     bash bench/gpu_all.sh fetch-wheels      # pip download into ./.whl (cp312, manylinux x86_64)
#     grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
# then run this script with .whl carried (device tool: carry [".whl"]). Without the device tool:
#     python3 -m pip install msgspec structlog pyzmq
set -uo pipefail

R="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
[[ "$PY" == */* ]] && PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # the stages run in /tmp
OUTDIR="${OUT:-$R/out/gpu}"
BUDGET="${GPU_ALL_BUDGET_S:-560}"
KBENCH_ARGS="${KBENCH_ARGS---quick}"
COLD_ARGS="${COLD_ARGS-}"
WHEELS=(msgspec==0.22.0 structlog==26.1.0 pyzmq==27.3.0)
START=$(date +%s)

if [[ "${1:-}" == "fetch-wheels" ]]; then
    HOSTPY="${PYTHON:-$R/.venv/bin/python}"
    exec "$HOSTPY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$R/.whl" "${WHEELS[@]}"
fi

mkdir -p "$OUTDIR"
SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# -- env --------------------------------------------------------------------------------------------
env_stage() {
    note "# bench/gpu_all.sh at $(date -u +%FT%TZ), repo $R, budget ${BUDGET} s"
    command -v nvidia-smi >/dev/null && nvidia-smi -L 2>&1 | tee -a "$SUMMARY"
    local missing
    missing=$("$PY" - <<'EOF'
import importlib.util
need = ["torch", "triton", "safetensors", "tokenizers", "transformers", "tqdm", "pytest", "msgspec", "structlog", "zmq"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)
    if [[ -n "$missing" && -d "$R/.whl" ]]; then
        note "installing from .whl for: $missing"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/c2cq-site "$R"/.whl/*.whl 2>&1 | tail -n 5 | tee -a "$SUMMARY"
        export PYTHONPATH="/tmp/c2cq-site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    # c2cq as an import name without installing: its package dirs, symlinked as setuptools maps them
    local P=/tmp/c2cq-pkg
    rm -rf "$P" && mkdir -p "$P/c2cq"
    for f in "$R"/c2cq/*; do ln -s "$f" "$P/c2cq/$(basename "$f")"; done
    for d in kernels schemas services loadgen; do ln -sfn "$R/$d" "$P/c2cq/$d"; done
    export PYTHONPATH="$P${PYTHONPATH:+:$PYTHONPATH}"
    (cd /tmp && "$PY" - <<'EOF') 2>&1 | tee -a "$SUMMARY"
import importlib, sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE'}")
for m in ("triton", "msgspec", "structlog", "zmq", "transformers", "safetensors"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '?')}")
    except ImportError as e:
        print(f"  {m} MISSING ({e})")
import c2cq.services.executor.cuda  # noqa: F401  the backend imports
print("  c2cq imports")
EOF
    local rc=${PIPESTATUS[0]}
    if ! (cd /tmp && "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"); then
        if [[ -z "${GPU_ALL_DRY:-}" ]]; then
            note "no CUDA device visible to torch: nothing to run here"; return 2
        fi
        note "GPU_ALL_DRY: no CUDA device; running the stages anyway (tests skip, benchmarks refuse)"
    fi
    if [[ $rc -ne 0 ]]; then
        note "c2cq does not import (missing msgspec/structlog/pyzmq? carry .whl: see the header of this script)"
    fi
    return "$rc"
}

# -- stages -----------------------------------------------------------------------------------------
pytest_stage() {  # name, path, cap seconds
    local name=$1 path=$2
    (cd /tmp && timeout -k 15 "$3" "$PY" -m pytest -c "$R/pyproject.toml" --rootdir "$R" "$R/$path" -q -p no:cacheprovider \
        -ra 2>&1) > "$OUTDIR/$name.log"
    local rc=$?
    tail -n 25 "$OUTDIR/$name.log"
    return $rc
}

stage_gpu() { pytest_stage gpu_tests tests/gpu "$1"; }
stage_kernels() { pytest_stage kernel_tests tests/kernels "$1"; }
stage_cold() {
    # shellcheck disable=SC2086
    (cd /tmp && PYTHONUNBUFFERED=1 timeout -k 15 "$1" "$PY" "$R/bench/cold_start_gpu.py" \
        --json "$OUTDIR/cold_start_gpu.json" $COLD_ARGS 2>&1) | tee "$OUTDIR/cold_start.log"
    return "${PIPESTATUS[0]}"
}
stage_kbench() {
    # shellcheck disable=SC2086
    (cd /tmp && PYTHONUNBUFFERED=1 timeout -k 15 "$1" "$PY" -m c2cq.kernels.bench $KBENCH_ARGS \
        --json "$OUTDIR/hybrid_gemm.json" 2>&1) > "$OUTDIR/hybrid_gemm.txt"
    local rc=$?
    cat "$OUTDIR/hybrid_gemm.txt"
    return $rc
}

declare -A CAP=([gpu]=240 [cold]=420 [kernels]=240 [kbench]=300)
STAGES=("$@")
[[ ${#STAGES[@]} -eq 0 ]] && STAGES=(gpu cold kernels kbench)

env_stage
ENV_RC=$?
[[ $ENV_RC -eq 2 ]] && exit 2
FAILED=$(( ENV_RC != 0 ))
for s in "${STAGES[@]}"; do
    [[ -z "${CAP[$s]:-}" ]] && { note "unknown stage $s (gpu cold kernels kbench)"; FAILED=1; continue; }
    if [[ $ENV_RC -ne 0 && ( $s == gpu || $s == cold ) ]]; then  # the kernels need torch and triton only
        note "SKIPPED $s: c2cq does not import (see above)"; continue
    fi
    remaining=$(left)
    if (( remaining < 45 )); then
        note "SKIPPED $s: ${remaining} s of the budget left; run: bash bench/gpu_all.sh $s"; FAILED=1; continue
    fi
    cap=${CAP[$s]}; (( cap > remaining - 5 )) && cap=$(( remaining - 5 ))
    echo "== $s (at most ${cap} s)"
    t0=$(date +%s)
    "stage_$s" "$cap"
    rc=$?
    took=$(( $(date +%s) - t0 ))
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        note "CUT $s after ${took} s (time limit); what it wrote is in $OUTDIR; run alone: bash bench/gpu_all.sh $s"
        FAILED=1
    elif [[ $rc -ne 0 ]]; then
        note "FAILED $s (exit $rc, ${took} s): see $OUTDIR"; FAILED=1
    else
        note "ok $s (${took} s)"
    fi
done
note "# total $(( $(date +%s) - START )) s; results in $OUTDIR"
exit $FAILED
