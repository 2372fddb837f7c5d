#!/usr/bin/env bash
# Fetches the packages the real-tag datasets are built from (docs/datasets.md) into data/packages/;
# a no-op when they are there. Run by `make datasets` (and so by `make test`), never at run time.
# OpenMoji comes from the npm registry with npm, pinned by version and checked by SHA-256.
set -euo pipefail
cd "$(dirname "$0")/.."
OPENMOJI_VERSION=17.0.0
OPENMOJI_SHA256=55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68
dest="data/packages/openmoji-$OPENMOJI_VERSION"
[ -f "$dest/data/openmoji.json" ] && [ -d "$dest/color/svg" ] && exit 0
if ! command -v npm >/dev/null; then
  echo "fetching OpenMoji needs npm: apt-get install npm (or make system-packages)" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching openmoji@$OPENMOJI_VERSION (npm) into $dest"
(cd "$tmp" && npm pack --silent "openmoji@$OPENMOJI_VERSION" >/dev/null)
echo "$OPENMOJI_SHA256  $tmp/openmoji-$OPENMOJI_VERSION.tgz" | sha256sum --check --quiet
mkdir -p "$tmp/unpacked" "$(dirname "$dest")"
tar -xzf "$tmp/openmoji-$OPENMOJI_VERSION.tgz" -C "$tmp/unpacked"
rm -rf "$dest"
mv "$tmp/unpacked/package" "$dest"
