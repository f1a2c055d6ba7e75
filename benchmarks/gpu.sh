#!/usr/bin/env bash
# One device call: every verb with --device cuda against --device cpu (tiny inputs built in code),
# then the streaming engine on a 7B-shaped bf16 set with the page cache dropped; one table.
#
#   benchmarks/gpu.sh                  # on a CUDA machine (about 5-8 minutes on an H200 box)
#   benchmarks/gpu.sh --cpu-dry-run    # anywhere: CPU on both sides, tiny engine shape
#
# Extra arguments go to benchmarks/gpu_check.py (--work DIR, --shape tiny|7b, --skip-engine).
# The 7B step needs 56 GB free under $TMPDIR (or --work): 3 inputs + 1 output; it is skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout --signal=INT 580 python benchmarks/gpu_check.py "$@"
