#!/usr/bin/env bash
# The script for a GPU loan (one H200, 15 minutes of device time in all, machine start included): the
# carried wheels installed, then bench/gpu_check.py (correctness on CUDA), then bench/gpu_bench.py (the
# Llama-3.2-1B shape against a naive HF + PEFT loop and a packed Liger baseline, the Llama-3.1-8B shape in
# an 80 GB budget, QLoRA 8B in a 24 GB one), then the rows for bench/RESULTS.md. One run stays under
# 8 minutes; every part reports its own failure and the run goes on.
#
#   bench/gpu.sh fetch-wheels        on the dev box, once, before the loan (into bench/wheels, git-ignored)
#   bench/gpu.sh [PART ...] [gpu_bench.py options]      on the GPU machine (default: every part)
#   bench/gpu.sh --smoke             the same sequence on CPU with tiny shapes, in seconds (make test runs it)
#
# The GPU image has torch, transformers, peft, accelerate and triton, but not pydantic (ticketune's config),
# bitsandbytes (QLoRA) or liger-kernel. fetch-wheels downloads the CI stack's versions of those for
# CPython 3.10 to 3.13 (about 52 MB: bitsandbytes and liger-kernel are one wheel for every Python, and
# pydantic-core one per version); the run installs the ones that fit the machine's Python. Carry
# bench/wheels with the run. Figures also go to $OUT/gpu_check.json and $OUT/gpu_bench.json when OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-bench/wheels}
BUDGET_S=${BUDGET_S:-440}   # gpu_bench stops its current part and prints what it measured after this long
CHECK_S=${CHECK_S:-150}     # gpu_check's own limit
PACKAGES=(pydantic pydantic-core annotated-types typing-inspection bitsandbytes liger-kernel)

if [[ ${1:-} == fetch-wheels ]]; then
  dev_python=${PYTHON:-.venv/bin/python}
  pins=$("$dev_python" -c 'from importlib.metadata import version as v
print(" ".join(f"{n}=={v(n)}" for n in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection",
                                        "bitsandbytes")))')
  mkdir -p "$WHEELS"
  for python_version in 3.10 3.11 3.12 3.13; do
    # shellcheck disable=SC2086  # $pins is a list of requirements
    "$dev_python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
      --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 -d "$WHEELS" $pins liger-kernel==0.8.5
  done
  du -sh "$WHEELS"
  exit 0
fi

PYTHON=${PYTHON:-python3}
smoke=()
if [[ ${1:-} == --smoke ]]; then
  smoke=(--smoke)
  shift
  BUDGET_S=120 CHECK_S=120
elif compgen -G "$WHEELS/*.whl" >/dev/null; then
  site=${TMPDIR:-/tmp}/ticketune-bench-site
  # by name, from the folder: pip takes the wheel that fits this Python and skips none it needs
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    --find-links "$WHEELS" "${PACKAGES[@]}" || echo "gpu.sh: some carried wheels did not install; going on"
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
if [[ ${#smoke[@]} -eq 0 ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PYTHON" -c 'import platform, torch, transformers, peft; print("python", platform.python_version(), "torch",
torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' || true
fi
cache=${CACHE_DIR:-${TMPDIR:-/tmp}/ticketune-gpu-bench}
check_out=() bench_out=()
if [[ -n ${OUT:-} ]]; then
  check_out=(--json-out "$OUT/gpu_check.json") bench_out=(--json-out "$OUT/gpu_bench.json")
fi

status=0
echo "== gpu_check"
timeout --signal=INT --kill-after=20 "$CHECK_S" "$PYTHON" bench/gpu_check.py "${smoke[@]}" --cache-dir "$cache" \
  "${check_out[@]}" || status=$?
echo "== gpu_bench"
timeout --signal=INT --kill-after=20 "$BUDGET_S" "$PYTHON" bench/gpu_bench.py "${smoke[@]}" --cache-dir "$cache" \
  "${bench_out[@]}" "$@" || status=$?
exit "$status"
