#!/usr/bin/env bash
# GPU benchmark for the lent H200: ticketune on Llama-3.2-1B and Llama-3.1-8B shapes, QLoRA 8B peak memory,
# and the naive HF + PEFT loop on the 1B shape in the same run, with MFU and hardware utilisation
# (bench/gpu_bench.py says how each figure is computed). One run stays under 8 minutes; parts can be run
# on separate loans and the table filled from each.
#
#   bench/gpu.sh [1b] [8b] [qlora] [gpu_bench.py options]   on the GPU machine (default: all parts)
#   bench/gpu.sh fetch-wheels                                on the dev box, once, before the loan
#
# The GPU image has torch, transformers, peft, accelerate and triton, but neither pydantic (ticketune's
# config) nor bitsandbytes (QLoRA). fetch-wheels downloads the CI stack's versions of those into $WHEELS
# (default bench/wheels, about 46 MB; keep it out of git and carry it to the machine); this script installs
# whatever wheels it finds there with pip --no-index into a private directory. Without bitsandbytes the
# qlora part reports "not measured". The figures are also written to $OUT/gpu_bench.json when OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-bench/wheels}
BUDGET_S=${BUDGET_S:-470}  # the run stops its current part and prints the table after this many seconds

if [[ ${1:-} == fetch-wheels ]]; then
  dev_python=${PYTHON:-.venv/bin/python}
  pins=$("$dev_python" -c 'from importlib.metadata import version as v
print(" ".join(f"{n}=={v(n)}" for n in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection",
                                        "bitsandbytes")))')
  mkdir -p "$WHEELS"
  # shellcheck disable=SC2086  # $pins is a list of requirements
  "$dev_python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_28_x86_64 -d "$WHEELS" $pins
  exit 0
fi

PYTHON=${PYTHON:-python3}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  site=${TMPDIR:-/tmp}/ticketune-bench-site
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$WHEELS"/*.whl
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

json_out=()
if [[ -n ${OUT:-} ]]; then
  json_out=(--json-out "$OUT/gpu_bench.json")
fi
exec timeout --signal=INT --kill-after=20 "$BUDGET_S" "$PYTHON" bench/gpu_bench.py \
  --cache-dir "${CACHE_DIR:-/tmp/ticketune-gpu-bench}" "${json_out[@]}" "$@"
