#!/usr/bin/env bash
# One-time set-up on a fresh Debian 12 / Ubuntu machine that has the .NET 10 SDK: installs the system packages
# Ecmt needs (only those missing) and restores NuGet packages. Safe to run again; the other scripts call it.
#   scripts/setup.sh               # what building, serving and the demo need
#   scripts/setup.sh --browser     # and Debian's chromium, for the live page's browser test (scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dotnet >/dev/null 2>&1; then
  echo "setup: the .NET 10 SDK is required (https://dot.net); 'dotnet' is not on PATH" >&2
  exit 1
fi

# dataset-fashion-mnist: training and evaluation data (/usr/share/datasets/fashion-mnist)
# libopenblas0-pthread: the BLAS of the CPU backends
# python3-grpcio, python3-protobuf, protobuf-compiler, protobuf-compiler-grpc: the Python example client and its CI check
# fonts-dejavu-core: the font `ecmt plot` draws its labels with
packages=(dataset-fashion-mnist libopenblas0-pthread python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc fonts-dejavu-core)
# chromium: the headless browser the page test drives with Playwright (about 3 minutes to install on 2 cores)
for arg in "$@"; do
  case "$arg" in
    --browser) packages+=(chromium) ;;
    *) echo "usage: scripts/setup.sh [--browser]" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: missing system packages ${missing[*]} and no apt-get to install them; install them by hand" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "setup: need root (or sudo) to install: ${missing[*]}" >&2
      exit 1
    fi
  fi
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && [ -z "${ECMT_FASHION_MNIST_DIR:-}" ]; then
  echo "setup: Fashion-MNIST is still missing after installing dataset-fashion-mnist" >&2
  exit 1
fi

dotnet restore Ecmt.sln --verbosity quiet
