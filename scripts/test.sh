#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: install what the tests drive, then pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/test_supervisor.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive for real: a private dbus-daemon (crash watcher tests),
# promtool (the Prometheus rules and a live /metrics scrape are checked with it), git (agents'
# config repositories), Chromium (the pages, driven by Playwright; its own browser download is
# never used), systemd-nspawn (the nspawn backend's real containers, as root), nix-instantiate
# (every nix/*.nix file parses; the module's pure option checks and hive.toml rendering).
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus-daemon)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v git >/dev/null 2>&1 || need+=(git)
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
command -v nix-instantiate >/dev/null 2>&1 || need+=(nix-bin)
if ((${#need[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "Error: the tests need ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
        exit 2
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
exec python3 -m pytest "$@"
