#!/usr/bin/env bash
# The test command: set up, then pytest and mypy --strict (miles_sdk, examples, tests/typing).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$root"
mypy --strict miles_sdk examples tests/typing
python -m pytest "$@"
