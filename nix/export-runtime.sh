# The body of the flake's export apps (flake.nix puts NIX2OCI_EXPORT_ROOTS, the runtime's store path,
# in front of it). Writes what `nix2oci build-image` reads:
#   <out>.closure          nix-store --export of every store path in the runtime's closure
#   <out>.path-info.json   nix path-info --json --recursive (for --path-info)
# Usage: export-vllm-rocm [out-prefix]   (default: vllm-rocm in the working directory)
# Files are written next to their final name and renamed, so an interrupted run leaves no half export.
set -euo pipefail
roots=${NIX2OCI_EXPORT_ROOTS:?NIX2OCI_EXPORT_ROOTS names the store paths to export}
out=${1:-vllm-rocm}
mkdir -p "$(dirname "$out")"
# shellcheck disable=SC2086 # store paths have no spaces; one word each
paths=$(nix-store --query --requisites $roots)
# shellcheck disable=SC2086
nix-store --export $paths >"$out.closure.tmp"
mv "$out.closure.tmp" "$out.closure"
# shellcheck disable=SC2086
nix --extra-experimental-features nix-command path-info --json --recursive $roots >"$out.path-info.json.tmp"
mv "$out.path-info.json.tmp" "$out.path-info.json"
count=$(printf '%s\n' "$paths" | wc -l)
echo "wrote $out.closure ($count store paths) and $out.path-info.json for nix2oci build-image"
