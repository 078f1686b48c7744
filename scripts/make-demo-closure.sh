#!/usr/bin/env bash
# Rebuilds layers/demo/demo.closure (the sample closure `npm start` turns into an image) with Nix.
# Needs nix-build and a static busybox at /bin/busybox (Debian: busybox-static).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$(nix-build --no-out-link "$here/layers/demo/demo.nix")
nix-store --export $(nix-store -qR "$out") > "$here/layers/demo/demo.closure.tmp"
mv "$here/layers/demo/demo.closure.tmp" "$here/layers/demo/demo.closure"
nix path-info --json --recursive "$out" > "$here/layers/demo/demo.path-info.json"
echo "wrote layers/demo/demo.closure ($(nix-store -qR "$out" | wc -l) store paths, root $out)"
