#!/usr/bin/env bash
# GPU figures as one JSON object (see bench/gpu.py): conversion RTF fp32/fp16 with batched pieces,
# training steps/s with AMP, separation RTF, peak GPU memory. `bash bench/gpu.sh --dry` runs the
# same paths with tiny sizes on the CPU (the test suite does).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${SINGTOME_PYTHON:-${SINGTOME_VENV:-$HOME/.cache/singtome/venv}/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 300 "$python" "$here/gpu.py" "$@"
