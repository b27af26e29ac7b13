#!/usr/bin/env bash
# The main job: set up, then train the embedded CPU demo and show the reward rising.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$root"
python -m miles_sdk.demo --output-dir "${1:-outputs/demo}"
