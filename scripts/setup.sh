#!/usr/bin/env bash
# Sets Lookalike up on a fresh Debian/Ubuntu machine, in a virtual environment (.venv beside this
# repo; LOOKALIKE_VENV=DIR to choose another). It never installs into the system Python, which
# Debian refuses anyway (PEP 668, "externally managed").
#   1. apt packages: packages.txt (the sample library's sources), python3 and python3-venv when
#      missing; with --dev also headless Chromium + chromedriver (browser and crawler tests) and
#      Fashion-MNIST (scale benchmarks). Uses sudo when not root.
#   2. `python3 -m venv .venv` (plain Debian has `python3` but no `python`), then the pinned
#      packages of requirements.txt into it; with --dev those of requirements-dev.txt (the same
#      plus the test and lint tools: pytest, ruff, mypy).
# Afterwards run everything as .venv/bin/python ..., or `source .venv/bin/activate` and type python.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LOOKALIKE_VENV:-.venv}"
PY="${PYTHON:-python3}"

apt_pkgs=$(grep -v '^\s*#' packages.txt | xargs)
if [ "${1:-}" = "--dev" ]; then
  apt_pkgs="$apt_pkgs chromium chromium-driver dataset-fashion-mnist"
fi
command -v "$PY" >/dev/null 2>&1 || apt_pkgs="$apt_pkgs python3"
# Debian and Ubuntu ship venv's pip bootstrap (ensurepip) in a separate package.
if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  apt_pkgs="$apt_pkgs python3-venv"
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
missing=""
for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "setup: installing apt packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
if command -v apt-get >/dev/null 2>&1 && ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
  # python3-venv is versioned on some releases (python3.11-venv): install the one for this python3.
  ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "python$ver-venv"
fi

# A venv left half-made by an interrupted run has no working pip: make it again.
if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  echo "setup: creating the virtual environment $VENV with $("$PY" --version 2>&1)"
  "$PY" -m venv --clear "$VENV"
fi
reqs=requirements.txt
if [ "${1:-}" = "--dev" ]; then reqs=requirements-dev.txt; fi
echo "setup: installing $reqs into $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
"$VENV/bin/python" -c 'import retrieval' && echo "setup: done; run the app or tests with $VENV/bin/python"
