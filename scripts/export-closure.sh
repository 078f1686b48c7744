#!/usr/bin/env bash
# Builds a runtime closure with Nix and writes what `nix2oci build-image` reads:
#   <out>.closure          nix-store --export of every store path in the closure
#   <out>.path-info.json   nix path-info --json --recursive (for --path-info)
# Usage: scripts/export-closure.sh [closure.nix] [out-prefix] [nix-build args…]
#   defaults: layers/vllm-rocm/closure.nix and out/<name of the .nix file's folder>
# Runs on a machine with Nix (and for the vLLM ROCm closure, its nixpkgs channel or -I nixpkgs=…).
# Files are written next to their final name and renamed, so an interrupted run leaves no half export.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
expr=${1:-$here/layers/vllm-rocm/closure.nix}
out=${2:-$here/out/$(basename "$(dirname "$(realpath "$expr")")")}
shift $(( $# < 2 ? $# : 2 ))

mkdir -p "$(dirname "$out")"
# --no-out-link: no `result` symlink (and no GC root) is left behind; the export is the artefact.
roots=$(nix-build --no-out-link "$expr" "$@")
# shellcheck disable=SC2086 # one store path per line, no spaces
paths=$(nix-store --query --requisites $roots)

nix-store --export $paths >"$out.closure.tmp"
mv "$out.closure.tmp" "$out.closure"
nix path-info --json --recursive $roots >"$out.path-info.json.tmp"
mv "$out.path-info.json.tmp" "$out.path-info.json"

count=$(printf '%s\n' "$paths" | wc -l)
size=$(du -h "$out.closure" | cut -f1)
echo "wrote $out.closure ($count store paths, $size) and $out.path-info.json"
echo "roots:"
printf '  %s\n' $roots
