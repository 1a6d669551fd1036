#!/usr/bin/env bash
# Installs checkov (the chart's static security checks) into its own venv in the cache: its
# large dependency tree stays out of the project's venv. Prints the checkov path last.
set -euo pipefail
CHECKOV_VERSION=3.3.30
cache_root="${POLCA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/polca}"
venv="$cache_root/checkov-$CHECKOV_VERSION"
if [[ ! -x "$venv/bin/checkov" ]]; then
  echo "[checkov] installing checkov $CHECKOV_VERSION into $venv (first time only)" >&2
  rm -rf "$venv.tmp"
  "${PYTHON:-python3.11}" -m venv "$venv.tmp"
  "$venv.tmp/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
  # A venv's scripts name their interpreter by absolute path: fix them before the move.
  for script in "$venv.tmp"/bin/*; do
    if [[ -f "$script" ]]; then sed -i "1s|$venv.tmp/|$venv/|" "$script"; fi
  done
  rm -rf "$venv"
  mv "$venv.tmp" "$venv"
fi
echo "$venv/bin/checkov"
