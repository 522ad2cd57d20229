"""No agent acts as the operator (issue 17, items 1, 3 and 7), tried on the whole daemon.

``hive serve`` runs as a subprocess with the process backend isolating each agent under its
own uid (the hive runs as root), the real ``claude`` CLI and the loopback model. The boss asks
to spawn an agent: an approval is pending. Then alice is compromised: from her own shell (the
dashboard's terminal into her container, which runs as her uid) she tries to read the operator
token, the hive's database and the boss's directories, and to call the operator API on
loopback — to read the hive and to deny the boss's approval. Every attempt is refused and the
approval is still pending, for the operator alone to decide.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hive_actors.harness.claude import bundled_claude_path
from hive_actors.store import Role
from tests.support.daemon import DaemonProcess, RecordingModel, wait_until
from tests.support.timeout import TIMEOUT
from tests.support.web import ws_connect

UID_BASE = 232000
"""Agents' uids here (away from the isolation tests' range)."""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="gives agents uids: needs root")


def _tool(tool_name: str, /, **args: object) -> str:
    return f"@tool {tool_name} {json.dumps(args)}"


@pytest.fixture
def isolated_hive() -> Iterator[tuple[RecordingModel, DaemonProcess]]:
    """A hive whose agents each run under their own uid: its files under a directory every
    user may search (pytest's tmp_path is under a 0700 one), the CLI copied where an agent's
    uid may run it (the bundled one may sit under a 0700 /root)."""
    bundled = bundled_claude_path()
    if not bundled.is_file():
        pytest.skip("no bundled claude CLI")
    root = Path(tempfile.mkdtemp(prefix="hive-auth-", dir="/tmp"))
    os.chmod(root, 0o711)
    claude = root / "bin" / "claude"
    claude.parent.mkdir(mode=0o755)
    shutil.copy(bundled, claude)
    os.chmod(claude, 0o755)
    try:
        with RecordingModel() as model:
            daemon = DaemonProcess(root, model, sections={
                "process": {"isolate": "on", "uid_base": UID_BASE},
                "model": {"claude_path": str(claude)},
            })
            try:
                yield model, daemon
            finally:
                daemon.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


PROBE = """
import os, sys, urllib.error, urllib.request
state, port = sys.argv[1], sys.argv[2]
boss = os.path.join(state, "agents", "boss")
for target in ("operator-token", "hive.db", "agents/boss/state", "agents/boss/claude",
               "agents/boss/state/.hive-run"):
    path = os.path.join(state, target)
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").read(1)
        print("PROBE read", target)
    except OSError as exc:
        print("PROBE denied", target, exc.__class__.__name__)
for method, path in (("GET", "/api/state"), ("GET", "/api/events?since=0"),
                     ("POST", "/api/approvals/%s/deny" % sys.argv[3])):
    request = urllib.request.Request("http://127.0.0.1:%s%s" % (port, path), method=method,
                                     data=b"" if method == "POST" else None)
    try:
        status = urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as exc:
        status = exc.code
    print("PROBE", method, path.split("?")[0], status)
print("PROBE uid", os.getuid())
"""


async def _terminal(port: int, token: str, command: str, marker: str) -> str:
    """Run ``command`` in the terminal on the agent page ``port``; what it printed up to the
    line ``marker``."""
    seen = ""
    async with ws_connect(port, "/ws/pty", token=token) as sock:
        await sock.send(command.encode() + b"\n")
        while f"\n{marker}" not in seen.replace("\r", ""):
            data = await asyncio.wait_for(sock.recv(), TIMEOUT)
            seen += data.decode(errors="replace") if isinstance(data, bytes) else data
    return seen.replace("\r", "")


def test_a_compromised_agents_shell_cannot_act_as_the_operator(
    isolated_hive: tuple[RecordingModel, DaemonProcess],
) -> None:
    _, daemon = isolated_hive
    daemon.register({"boss": Role.MANAGER, "alice": Role.AGENT})
    daemon.start()
    daemon.wait_ready()
    daemon.wait_settled(["boss", "alice"], timeout=90)
    asked = daemon.message("boss", _tool("mcp__hive__request_spawn", name="carol"))
    assert asked.ok, asked
    approval = wait_until(
        lambda: next((a for a in daemon.approvals()
                      if a.get("agent") == "carol" and a.get("status") == "pending"), None),
        60, "the boss's spawn request", describe=daemon.describe)

    # The agent's own tools: an interpreter every user may run (the hive's own may sit under
    # a 0700 /root).
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 an agent's uid may run")
    alice: dict[str, Any] = daemon.agents()["alice"]
    probe = daemon.state_dir / "agents" / "alice" / "state" / "probe.py"
    probe.write_text(PROBE)
    os.chmod(probe, 0o644)
    out = asyncio.run(_terminal(
        alice["web_port"], daemon.token,
        f"{python} probe.py {daemon.state_dir} {daemon.port} {approval['id']}; "
        "echo DONE$((40+2))",
        "DONE42",
    ))
    # (A line may start with the terminal's escape sequences.)
    lines = [line.split("PROBE ", 1)[1] for line in out.split("\n") if "PROBE " in line]
    uid = next((int(line.split()[1]) for line in lines if line.startswith("uid")), None)
    assert uid is not None, out
    assert uid > UID_BASE  # the shell really is alice's, not the hive's
    for target in ("operator-token", "hive.db", "agents/boss/state", "agents/boss/claude"):
        assert f"denied {target} PermissionError" in lines, (target, lines)
    assert not [line for line in lines if line.startswith("read")], lines
    assert "GET /api/state 401" in lines and "GET /api/events 401" in lines, lines
    assert f"POST /api/approvals/{approval['id']}/deny 401" in lines, lines

    # Nothing changed: the approval waits for the operator, who alone decides it.
    pending = [a for a in daemon.approvals() if a["id"] == approval["id"]]
    assert pending and pending[0]["status"] == "pending", pending
    assert daemon.request("POST", f"/api/approvals/{approval['id']}/deny",
                          anonymous=True).status == 401
    decided = daemon.deny(approval["id"])
    assert decided.ok, decided
    recent = daemon.get("/api/approvals?recent=1")
    assert recent.ok, recent
    assert [a["status"] for a in recent.body["approvals"] if a["id"] == approval["id"]] == [
        "denied"
    ]
