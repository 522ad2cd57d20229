#!/usr/bin/env bash
# The whole test suite, on a stock Debian 12 or 13 (as root, or as a user with sudo): install
# the Debian packages the tests drive when they are missing, put the package with its `test`
# extras in the venv at .venv in this checkout (the one scripts/demo.sh uses; never the system
# Python), then run that venv's pytest with its bin/ first on PATH (`python3` and `hive` are the
# venv's). Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/test_supervisor.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
HIVE_WHAT="the tests"
# shellcheck source=scripts/demo.sh
source scripts/demo.sh  # hive_base_packages, hive_apt_install, hive_venv

# Debian packages the tests drive for real: a private dbus-daemon (crash watcher tests),
# promtool (the Prometheus rules and a live /metrics scrape are checked with it), git (agents'
# config repositories), Chromium (the pages, driven by Playwright; its own browser download is
# never used), systemd-nspawn (the nspawn backend's real containers, as root), nix-instantiate
# (every nix/*.nix file parses; the module's pure option checks and hive.toml rendering); and
# what the venv needs (python3-venv, ca-certificates).
mapfile -t need < <(hive_base_packages)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus-daemon)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
command -v nix-instantiate >/dev/null 2>&1 || need+=(nix-bin)
hive_apt_install "${need[@]}"

hive_venv .venv test
export VIRTUAL_ENV="$PWD/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
exec "$VIRTUAL_ENV/bin/python" -m pytest "$@"
