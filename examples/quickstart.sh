#!/usr/bin/env bash
# Quickstart: install Kata CI and its system packages, then run the example pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install
cd examples/hello
kata validate
kata graph
