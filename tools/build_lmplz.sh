#!/usr/bin/env bash
# Build KenLM's estimator `lmplz` (and `query`) from the kenlm source distribution.
#
#   tools/build_lmplz.sh            # -> build/kenlm/bin/lmplz
#
# The `kenlm` Python wheel only scores ARPA files; the estimator lives in the sdist's
# lm/builder and needs CMake, a C++ compiler and Debian's Boost. Only needed to regenerate
# the golden ARPA fixtures (tools/make_kenlm_fixtures.sh) and for benchmarks/ngram_ptb.py's
# side-by-side figure; the tests use the committed fixtures.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="$ROOT/build/kenlm"
PIP="${PIP:-$ROOT/.venv/bin/pip}"

if [ ! -x "$BUILD/bin/lmplz" ]; then
  if ! dpkg -s libboost-program-options-dev libboost-system-dev libboost-thread-dev \
       libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev >/dev/null 2>&1; then
    apt-get update -q
    apt-get install -y -q cmake g++ libboost-program-options-dev libboost-system-dev \
      libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev
  fi
  mkdir -p "$BUILD"
  # --no-build-isolation: otherwise pip builds the sdist's build requirements (CMake
  # itself) from source just to read its metadata
  "$PIP" download --no-binary kenlm --no-deps --no-build-isolation --dest "$BUILD" kenlm
  tar -xzf "$BUILD"/kenlm-*.tar.gz -C "$BUILD"
  SRC="$(find "$BUILD" -maxdepth 1 -type d -name 'kenlm-*' | head -n 1)"
  cmake -S "$SRC" -B "$BUILD/cmake" -DCMAKE_BUILD_TYPE=Release -DCOMPILE_TESTS=OFF \
    -DFORCE_STATIC=OFF >/dev/null
  cmake --build "$BUILD/cmake" --target lmplz query -j "${JOBS:-2}"
  mkdir -p "$BUILD/bin"
  cp "$BUILD/cmake/bin/lmplz" "$BUILD/cmake/bin/query" "$BUILD/bin/"
fi
echo "$BUILD/bin/lmplz"
