#!/usr/bin/env bash
# Installs the Debian packages labelspace needs; a no-op when they are already there.
set -euo pipefail
packages=()
[ -d /usr/share/datasets/fashion-mnist ] || packages+=(dataset-fashion-mnist)
compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || packages+=(postgresql)  # `labelspace team up`
[ -x /usr/sbin/mariadbd ] || packages+=(mariadb-server)  # `labelspace team up`: the ZenML server's database
command -v chromium >/dev/null || packages+=(chromium)  # tests/test_card.py renders the model card headless
compgen -G '/usr/lib/*/librsvg-2.so.2' >/dev/null || packages+=(librsvg2-2)  # renders the OpenMoji artwork (labelspace.data.svg)
command -v npm >/dev/null || packages+=(npm)  # scripts/fetch_datasets.sh fetches the openmoji package from the npm registry
[ ${#packages[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "labelspace needs the Debian packages: ${packages[*]}; install them as root (apt-get install ${packages[*]})" >&2
  exit 1
fi
echo "installing Debian packages: ${packages[*]}"
$sudo apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null
