#!/usr/bin/env bash
# Installs what Lookalike needs on a fresh Debian/Ubuntu machine: apt packages (packages.txt: the
# sample library's sources), then the pinned Python packages. With --dev, also what the tests need:
# headless Chromium + its driver (browser and crawler tests) and Fashion-MNIST (scale benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
apt_pkgs=$(grep -v '^\s*#' packages.txt | xargs)
if [ "${1:-}" = "--dev" ]; then
  apt_pkgs="$apt_pkgs chromium chromium-driver dataset-fashion-mnist"
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
missing=""
for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
python -m pip install -q --disable-pip-version-check -r requirements.txt
