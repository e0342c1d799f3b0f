#!/usr/bin/env bash
# Quickstart: install Kata CI and what it needs to run (.ci/install-kata: containerd, runc,
# CNI plugins, the package; busybox-static for the example's image), check the host with
# `kata doctor`, make a base image locally, and run
# the example pipeline (build -> test, lint -> package) twice on kata's embedded containerd:
# the first run builds everything, the second resolves every step from the store.
# Set KATA_SKIP_INSTALL=1 to skip the install step (and KATA="python3 -m kata" to use a checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${KATA_SKIP_INSTALL:-}" != 1 ]]; then
  bash .ci/install-kata busybox-static
fi
read -r -a kata <<<"${KATA:-kata}"
"${kata[@]}" doctor
image="$(mktemp -d)/busybox.tar"
python3 examples/make_base_image.py "$image"
"${kata[@]}" image import "$image"
rm -rf "$(dirname "$image")"
cd examples/hello
"${kata[@]}" validate
"${kata[@]}" graph
echo "--- first run"
"${kata[@]}" run
echo "--- second run (every step from the cache)"
out="$("${kata[@]}" run)"
echo "$out"
grep -q "^\[DONE\] 4 steps (4 cached, 0 ran)" <<<"$out" || { echo "expected all 4 steps cached" >&2; exit 1; }
"${kata[@]}" logs --step build
