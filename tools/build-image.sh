#!/usr/bin/env bash
# Builds the POLCA image from the repository's Dockerfile and prints its name last.
#
#   tools/build-image.sh [NAME]          NAME defaults to polca:dev
#   BASE=python:3.11-slim-bookworm tools/build-image.sh   use a base image you can pull
#   EXTRAS=sim tools/build-image.sh      with the `sim` extra, for fake GPUs (kind, tests/e2e)
#
# With a Docker engine: `docker build`. Without one: podman, and unless BASE is given, a base
# image made here from Debian's packages by mmdebstrap (Debian bookworm's python3 is 3.11), so
# the build pulls nothing from a container registry. The project's Python dependencies still come
# from PyPI; the build container uses the host network because only the host reaches the index.
# The base is cached as a tarball under ~/.cache/polca/image, keyed by its suite and packages.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
image="${1:-polca:dev}"
cache_root="${POLCA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/polca}"
log() { echo "[image] $*" >&2; }

# pip inside the build trusts the same CA bundle as pip here (a proxy may re-sign TLS).
ca_bundle="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
secret=()
[[ -s "$ca_bundle" ]] && secret=(--secret "id=ca-bundle,src=$ca_bundle")

if docker info >/dev/null 2>&1; then
  DOCKER_BUILDKIT=1 docker build "${secret[@]}" ${BASE:+--build-arg "BASE=$BASE"} \
    --build-arg "EXTRAS=${EXTRAS:-}" -t "$image" "$repo" >&2
  echo "$image"
  exit 0
fi
command -v podman >/dev/null || {
  log "no Docker engine answers and podman is missing: run 'make node-packages' as root"; exit 1; }

# runc, not Debian's default crun: crun refuses this kernel's hybrid cgroup layout. The rlimits
# are explicit because podman's defaults exceed the hard limits of the sandbox we build in.
podman_flags=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

if [[ -z "${BASE:-}" ]]; then
  suite=bookworm
  packages=python3,python3-venv,ca-certificates
  key="$(echo "$suite $packages" | sha256sum | cut -c1-12)"
  BASE="localhost/polca-base:$suite-$key"
  if ! podman image exists "$BASE"; then
    command -v mmdebstrap >/dev/null || {
      log "mmdebstrap is missing: run 'make node-packages' as root, or give BASE=<image>"; exit 1; }
    tarball="$cache_root/image/base-$suite-$key.tar"
    if [[ ! -s "$tarball" ]]; then
      mkdir -p "$(dirname "$tarball")"
      log "making the base from Debian's packages ($packages), first time only"
      start=$SECONDS
      # Documentation, manuals and translations are dropped: nothing in the image reads them.
      nice mmdebstrap --variant=minbase --format=tar --include="$packages" \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        "$suite" "$tarball.tmp" >&2
      mv "$tarball.tmp" "$tarball"
      log "base made in $((SECONDS - start)) s"
    fi
    podman import --change 'CMD ["python3"]' "$tarball" "$BASE" >&2
  fi
fi

log "building $image on $BASE"
nice podman build "${podman_flags[@]}" "${secret[@]}" --network host --build-arg "BASE=$BASE" \
  --build-arg "EXTRAS=${EXTRAS:-}" \
  -t "$image" -f "$repo/Dockerfile" "$repo" >&2
echo "$image"
