"""The README's two first commands (issue 20, item 1): ``bash scripts/demo.sh`` and
``bash scripts/test.sh`` set up a venv and never write into the system Python (Debian's refuses
``pip install``: PEP 668), and ``.ci/run`` calls the second exactly.

The first command runs for real in a throwaway ``systemd-nspawn --directory=/ --volatile=yes``
container: a tmpfs root with the host's ``/usr`` read-only (Debian's own ``/usr/bin/python3``,
first on ``PATH=/usr/bin:/bin``; nothing of the host's pyenv, pip configuration or installed
packages), the few ``/etc`` files a stock Debian has that pip and git need (passwd, group, hosts,
nsswitch.conf, ssl), the checkout bound read-only and copied to a writable folder inside, and the
host's pip cache bound read-write (PyPI on the host's network: no ``--private-network``). It
builds the venv, plays the demo's scripted exchange (``--check``), then reruns to show the venv
is reused without pip. Root only (a skip otherwise); under ``CI=true`` a missing
``systemd-nspawn`` is a failure. apt-get does not run inside: ``git`` and ``python3-venv`` are
under the host's ``/usr`` (``scripts/test.sh`` installs them first), and the container has no
dpkg database to install into.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.timeout import TIMEOUT

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ("scripts/demo.sh", "scripts/test.sh")
CHECKED = "demo check: the scripted exchange played out"
ETC = ("/etc/passwd", "/etc/group", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl")
"""The host's /etc entries a stock Debian has and the container gets (read-only)."""
INSTALL_TIMEOUT = 300.0
"""The container's whole run: a venv, pip install (claude-agent-sdk bundles the CLI), the demo."""

pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT + 60)


def readme_commands() -> list[str]:
    """The README's first two fenced code blocks, each stripped."""
    blocks = re.findall(r"^```sh\n(.*?)^```", (REPO / "README.md").read_text(),
                        re.MULTILINE | re.DOTALL)
    return [b.strip() for b in blocks[:2]]


def code_lines(script: str) -> list[str]:
    """The script's lines without comments (a ``#`` after a space or at the start)."""
    out = []
    for line in (REPO / script).read_text().splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            out.append(line)
    return out


# -- the commands, read ----------------------------------------------------------------------------


def test_the_readme_starts_with_the_two_commands() -> None:
    assert readme_commands() == ["bash scripts/demo.sh", "bash scripts/test.sh"]


def test_ci_runs_exactly_the_readmes_second_command() -> None:
    second = readme_commands()[1]
    lines = code_lines(".ci/run")
    assert lines[-1] == second, lines
    assert sum("scripts/test.sh" in line for line in lines) == 1, lines


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_scripts_pip_install_only_with_a_venvs_python(script: str) -> None:
    # Every pip command (an `echo` only says what runs) is the venv's python's; test.sh has
    # none of its own: it installs through demo.sh's hive_venv, which it sources.
    lines = [line for line in code_lines(script) if not line.startswith("echo ")]
    pips = [line for line in lines if re.search(r"\bpip3?\b", line)]
    assert pips == ([] if script == "scripts/test.sh" else [
        '"$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"'
    ]), pips
    text = "\n".join(lines)
    for bad in ("--break-system-packages", "--user", "python3 -m pip", "pipx", "uv "):
        assert bad not in text, (script, bad)
    if script == "scripts/test.sh":
        assert "source scripts/demo.sh" in lines


def test_test_sh_runs_the_venvs_pytest_with_its_bin_first_on_path() -> None:
    lines = code_lines("scripts/test.sh")
    assert "hive_venv .venv test" in lines
    assert 'export PATH="$VIRTUAL_ENV/bin:$PATH"' in lines
    assert lines[-1] == 'exec "$VIRTUAL_ENV/bin/python" -m pytest "$@"', lines[-1]


def test_demo_sh_runs_the_venvs_hive() -> None:
    lines = code_lines("scripts/demo.sh")
    assert "hive_venv .venv" in lines
    assert lines[-1] == 'exec .venv/bin/hive demo "$@"', lines[-1]


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_scripts_parse(script: str) -> None:
    done = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr


def test_without_root_or_sudo_a_missing_package_is_one_line() -> None:
    # The script comes on stdin (the checkout may sit where nobody cannot read: a 0700 /root);
    # the function runs with nothing on PATH: no sudo, no apt-get (never reached).
    bash = shutil.which("bash") or "/bin/bash"
    argv = [bash, "-c",
            "source <(cat) && PATH=/nonexistent hive_apt_install git python3-venv"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("as root, needs setpriv (util-linux) to run as nobody")
        argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    done = subprocess.run(argv, cwd="/", capture_output=True, text=True, timeout=TIMEOUT,
                          check=False, env={"PATH": "/usr/bin:/bin", "HOME": "/"},
                          input=(REPO / "scripts" / "demo.sh").read_text())
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        ("Error: the demo needs the Debian packages git python3-venv, and this is not root and "
         "has no sudo: as root, run: apt-get install -y git python3-venv")
    ]


# -- the first command, run in a clean container --------------------------------------------------


def checkout_files() -> list[str]:
    """The checkout's files git knows of (tracked, or untracked and not ignored) that exist."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the container copies the files git knows of")
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, stdout=subprocess.PIPE, timeout=TIMEOUT * 6,
    ).stdout.decode()
    return sorted(f for f in set(listed.split("\0"))
                  if f and (os.path.isfile(REPO / f) or os.path.islink(REPO / f)))


INSIDE = """\
set -euo pipefail
mkdir -p /root/hive_actors
cd /mnt/checkout
xargs -0 cp -a --parents -t /root/hive_actors </mnt/work/files
cd /root/hive_actors
echo "python3: $(command -v python3)" >&2
if python3 -m pip install --dry-run --no-deps pykka >/dev/null 2>&1; then
    echo "the system Python accepts pip install" >&2
fi
started=$(date +%s)
bash scripts/demo.sh --check --port 0 --state-dir /root/state
echo "first: $(($(date +%s) - started))s" >&2
started=$(date +%s)
bash scripts/demo.sh --check --port 0 --state-dir /root/state-again
echo "rerun: $(($(date +%s) - started))s" >&2
"""


def test_the_first_command_runs_the_demo_in_a_clean_container(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for systemd-nspawn")
    nspawn = shutil.which("systemd-nspawn")
    if nspawn is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI: systemd-nspawn is missing (scripts/test.sh installs systemd-container)")
        pytest.skip("needs systemd-nspawn (Debian: apt-get install systemd-container)")
    for tool, package in (("git", "git"), ("python3", "python3-venv")):
        if not os.path.exists(f"/usr/bin/{tool}"):
            pytest.skip(f"the host's /usr has no {tool} ({package}): the container cannot apt-get")
    work = tmp_path / "work"
    work.mkdir()
    (work / "files").write_bytes(b"".join(f.encode() + b"\0" for f in checkout_files()))
    (work / "inside.sh").write_text(INSIDE)
    pip_cache = Path.home() / ".cache" / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    argv = [
        nspawn, "--quiet", "--register=no", "--keep-unit", "--directory=/", "--volatile=yes",
        "--console=pipe", f"--machine=first-commands-{os.getpid()}",
        f"--bind-ro={REPO}:/mnt/checkout", f"--bind={work}:/mnt/work",
        f"--bind={pip_cache}:/root/.cache/pip",
        *(f"--bind-ro={p}" for p in ETC if os.path.exists(p)),
        "--setenv=PATH=/usr/bin:/bin", "--setenv=HOME=/root", "--setenv=LANG=C.UTF-8",
        "--chdir=/root", "/bin/bash", "/mnt/work/inside.sh",
    ]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                          check=False, stdin=subprocess.DEVNULL)
    took = time.monotonic() - started
    tail = f"after {took:.0f}s\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-6000:]}"
    assert done.returncode == 0, tail
    err = done.stderr.splitlines()
    assert "python3: /usr/bin/python3" in err, tail  # Debian's own, first on PATH
    assert "the system Python accepts pip install" not in err, tail  # PEP 668 holds in there
    assert "the demo: pip install -e '.' into .venv" in err, tail  # into the venv
    assert done.stdout.count(CHECKED) == 2, tail  # the first run and the rerun
    # The rerun reused the venv: one venv created, one pip install, no apt-get.
    assert sum(line.startswith("the demo: creating the venv .venv") for line in err) == 1, tail
    assert sum(line.startswith("the demo: pip install") for line in err) == 1, tail
    assert not [line for line in err if "(apt-get)" in line], tail
