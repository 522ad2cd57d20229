#!/usr/bin/env bash
# The demo hive, on a stock Debian 12 or 13 (as root, or as a user with sudo): installs the
# Debian packages the demo needs when they are missing (git, python3-venv, ca-certificates),
# puts the package in a venv at .venv in this checkout (never the system Python: Debian's is
# externally managed, PEP 668), then runs `hive demo` from that venv. Arguments go to
# `hive demo` (e.g. `bash scripts/demo.sh --check --port 0`). A rerun reuses the venv and skips
# pip while setup.cfg, setup.py, pyproject.toml and the package's version are unchanged.
#
# scripts/test.sh sources this file for its functions (the part above the `return` below): the
# same venv, with the `test` extras added.
set -euo pipefail

HIVE_WHAT=${HIVE_WHAT:-"the demo"}
HIVE_STAMP=.hive-install
# What `pip install -e` last put in the venv: line 1 the inputs' hash, then one extra per line.

hive_base_packages() {
    # The Debian packages missing for a venv that can pip install, and for the agents (git).
    local python=${HIVE_PYTHON:-python3}
    if ! command -v "$python" >/dev/null 2>&1 \
        || ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        echo python3-venv  # Debian's python3 has no ensurepip without it (depends on python3)
    fi
    command -v git >/dev/null 2>&1 || echo git
    [ -e /etc/ssl/certs/ca-certificates.crt ] || echo ca-certificates  # pip's https to PyPI
}

hive_apt_install() {
    # apt-get install PACKAGES (none: nothing), as root or through sudo; else one line and exit 2.
    (($#)) || return 0
    local sudo=()
    if [ "$EUID" != 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "Error: $HIVE_WHAT needs the Debian packages $*, and this is not root and has" \
                "no sudo: as root, run: apt-get install -y $*" >&2
            exit 2
        fi
        sudo=(sudo)
    fi
    echo "$HIVE_WHAT: installing $* (apt-get)" >&2
    if ! "${sudo[@]}" apt-get update -qq \
        || ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq "$@" >/dev/null; then
        echo "Error: $HIVE_WHAT needs the Debian packages $*: apt-get install -y $* failed" >&2
        exit 2
    fi
}

hive_inputs_hash() {
    # What the editable install depends on: the packaging files, the version, where it lives.
    {
        cat setup.cfg setup.py pyproject.toml
        grep '^__version__' hive_actors/__init__.py
        pwd -P
    } | sha256sum | cut -d' ' -f1
}

hive_venv() {
    # hive_venv DIR EXTRA...: the venv at DIR with this checkout installed editable, with the
    # extras named (none: the package alone). Made anew when missing, broken, or stale (the
    # packaging files, the version or the checkout's place changed); pip runs only then, or to
    # add an extra the stamp lacks. HIVE_PYTHON: the Python to make it with (default python3).
    local venv=$1
    shift
    local python=${HIVE_PYTHON:-python3} hash spec extra stamp=() missing=()
    hash=$(hive_inputs_hash)
    (
        flock 9
        if "$venv/bin/python" -c '' >/dev/null 2>&1 && [ -f "$venv/$HIVE_STAMP" ]; then
            mapfile -t stamp <"$venv/$HIVE_STAMP"
        fi
        if ((${#stamp[@]})) && [ "${stamp[0]}" = "$hash" ]; then
            for extra in "$@"; do
                printf '%s\n' "${stamp[@]:1}" | grep -qxF "$extra" || missing+=("$extra")
            done
            ((${#missing[@]})) || exit 0  # current: no pip
            stamp=("${stamp[@]:1}" "${missing[@]}")
        else
            rm -rf "$venv"
            echo "$HIVE_WHAT: creating the venv $venv ($("$python" --version 2>&1))" >&2
            "$python" -m venv "$venv"
            stamp=("$@")
        fi
        mapfile -t stamp < <(printf '%s\n' "${stamp[@]}" | sed '/^$/d' | sort -u)
        spec=.
        if ((${#stamp[@]})); then
            spec=".[$(IFS=,; echo "${stamp[*]}")]"
        fi
        echo "$HIVE_WHAT: pip install -e '$spec' into $venv" >&2
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
        printf '%s\n' "$hash" "${stamp[@]}" >"$venv/$HIVE_STAMP"
    ) 9>"$venv.lock"
}

# Sourced (scripts/test.sh): the functions only.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    return 0
fi

cd "$(dirname "$0")/.."
# shellcheck disable=SC2046  # package names, one word each
hive_apt_install $(hive_base_packages)
hive_venv .venv
exec .venv/bin/hive demo "$@"
