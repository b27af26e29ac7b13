#!/usr/bin/env bash
# Create .venv (once) with the CPU torch build and miles_sdk + dev extras. Sourced by demo.sh and test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MILES_SDK_VENV:-$root/.venv}"
stamp="$venv/.miles_sdk_installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # The CPU build of torch that is on disk here; plain `torch` would pull a multi-GB CUDA build.
  "$venv/bin/python" -m pip install -q "torch==2.13.0"
  "$venv/bin/python" -m pip install -q -e "$root[dev,datasets]"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
