#!/usr/bin/env bash
# Build llama.cpp's `llama-server`, `llama-bench` and `llama-batched-bench` from the sources
# vendored in the llama-cpp-python sdist.
#
#   tools/build_llama_server.sh     # -> build/llama.cpp/bin/llama-server (12 min of CPU)
#
# Benchmark references only (benchmarks/serve.py runs the server beside `lmforge serve`,
# benchmarks/quantize.py the two bench tools beside lmforge's quantized layers); nothing in
# lmforge or its tests needs it. Idempotent: prints the binary's path and exits when it is
# already built. Needs CMake >= 3.14 and a C++17 compiler; no network beyond PyPI.
# Pin another release with LLAMA_CPP_PYTHON_VERSION=..., more build jobs with JOBS=...
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SDIST="$ROOT/build/llama-sdist"
BUILD="$ROOT/build/llama.cpp"
BIN="$BUILD/bin/llama-server"
TOOLS="llama-server llama-bench llama-batched-bench"
PIP="${PIP:-$ROOT/.venv/bin/pip}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"

if [ ! -x "$BIN" ] || [ ! -x "$BUILD/bin/llama-bench" ] || [ ! -x "$BUILD/bin/llama-batched-bench" ]; then
  mkdir -p "$SDIST"
  if [ ! -f "$SDIST/llama_cpp_python-$VERSION.tar.gz" ]; then
    # pip has to prepare the sdist's metadata; with build isolation it only installs the
    # scikit-build-core wheel for that (~20 s), without it the backend is missing
    "$PIP" download --no-deps --no-binary llama-cpp-python --dest "$SDIST" \
      "llama-cpp-python==$VERSION"
  fi
  SRC="$SDIST/llama_cpp_python-$VERSION/vendor/llama.cpp"
  [ -d "$SRC" ] || tar -xzf "$SDIST/llama_cpp_python-$VERSION.tar.gz" -C "$SDIST"
  # GGML_NATIVE tunes the kernels to this CPU, as llama-cpp-python's own build does. The
  # -mno-amx-* flags keep AMX out even where the CPU has it (PITFALLS: its extra buffer
  # types can crash). The web UI would be downloaded from Hugging Face at build time, so
  # it is off (the API does not need it); HTTPS (OpenSSL) is not needed on loopback.
  NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  GENERATOR="$(command -v ninja >/dev/null && echo Ninja || echo 'Unix Makefiles')"
  cmake -S "$SRC" -B "$BUILD" -G "$GENERATOR" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" \
    -DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >/dev/null
  # shellcheck disable=SC2086  # TOOLS is a list of targets
  cmake --build "$BUILD" --target $TOOLS -j "${JOBS:-2}"
fi
echo "$BIN"
