#!/usr/bin/env bash
# The nix2oci step of a CI pipeline (docs/ci.md): builds the image from the closure a Nix job exported
# and pushes it, taking every layer the registry already holds from the registry cache instead of
# building and uploading it again; then merges this build's layers into the cache. Prints the pushed
# digest last (and writes it to $GITHUB_OUTPUT as `digest` on GitHub Actions).
#
# Settings, from the environment:
#   IMAGE              where to push: HOST[:PORT]/REPO:TAG (required)
#   CLOSURE            the nix-store --export file (default: closure.export)
#   PATH_INFO          nix path-info --json --recursive output to check the closure against (optional)
#   RECIPE             the image recipe (optional)
#   CACHE_REF          the registry cache index (default: the image's repository, tag nix2oci-cache)
#   REGISTRY_USER, REGISTRY_PASSWORD
#                      credentials (optional; else docker's and podman's auth files and helpers).
#                      They go to nix2oci in an auth file readable only by this user, never on a
#                      command line, where other processes could read them.
#   DIGEST_FILE        where the pushed digest is written (default: image.digest)
#   NIX2OCI            the nix2oci command (default: nix2oci; e.g. "npx nix2oci")
#   NIX2OCI_FLAGS      more build-image flags, split on spaces (e.g. --cert-dir certs, --tls-verify=false)
set -euo pipefail

: "${IMAGE:?set IMAGE to HOST[:PORT]/REPO:TAG}"
closure=${CLOSURE:-closure.export}
digest_file=${DIGEST_FILE:-image.digest}
read -r -a nix2oci <<<"${NIX2OCI:-nix2oci}"
read -r -a extra <<<"${NIX2OCI_FLAGS:-}"

name=${IMAGE##*/}
if [[ $name != *:* ]]; then
  echo "ci-build.sh: IMAGE $IMAGE has no tag; give one (HOST/REPO:TAG)" >&2
  exit 1
fi
cache=${CACHE_REF:-${IMAGE%:*}:nix2oci-cache}

auth=()
if [[ -n ${REGISTRY_USER:-} || -n ${REGISTRY_PASSWORD:-} ]]; then
  host=${IMAGE%%/*}
  authdir=$(mktemp -d)
  trap 'rm -rf "$authdir"' EXIT
  token=$(printf '%s:%s' "${REGISTRY_USER:-}" "${REGISTRY_PASSWORD:-}" | base64 | tr -d '\n')
  (umask 077 && printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$host" "$token" >"$authdir/auth.json")
  auth=(--authfile "$authdir/auth.json")
fi

args=(build-image --closure "$closure" --push "$IMAGE" --cache-from "$cache" --cache-to "$cache" --digestfile "$digest_file")
[[ -n ${PATH_INFO:-} ]] && args+=(--path-info "$PATH_INFO")
[[ -n ${RECIPE:-} ]] && args+=(--recipe "$RECIPE")

"${nix2oci[@]}" "${args[@]}" "${auth[@]}" "${extra[@]}" >/dev/null

digest=$(cat "$digest_file")
[[ -n ${GITHUB_OUTPUT:-} ]] && echo "digest=$digest" >>"$GITHUB_OUTPUT"
echo "$IMAGE@$digest"
