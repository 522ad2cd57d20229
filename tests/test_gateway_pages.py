"""Agent pages at the gateway level: each on its persisted port, through a gateway restart,
and a port held by a stranger reported with the port and the fix."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from hive_actors.httpd.ports import PORT_FILE
from hive_actors.store import Role
from hive_actors.supervisors.client import SupervisorClient
from tests.support.gateway import (
    agent_port,
    gateway_hive,
    served_pages,
    state_of,
)
from tests.support.timeout import TIMEOUT
from tests.support.web import bearer


def page_answers(port: int, token: str) -> bool:
    try:
        with httpx.Client(trust_env=False, timeout=TIMEOUT, headers=bearer(token)) as client:
            return client.get(f"http://127.0.0.1:{port}/api/state").status_code == 200
    except httpx.ConnectError:
        return False


def test_an_agent_page_keeps_its_persisted_port_across_a_gateway_restart(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT}) as hive:
        port = agent_port(hive, "alice")
        port_file = hive.daemon.hive.agent_paths("alice").state / PORT_FILE
        assert port_file.read_text().strip() == str(port)
        assert state_of(hive, "alice")["web_port"] == port
        with hive.api(port) as page:
            assert page.get("/").text.startswith("<!doctype html>")
            assert "agent.js" in page.get("/").text

        # The gateway restarts (its supervisor's way): the pages go, and come back on the
        # same ports; the dashboard gets a new port (it asked for 0).
        root = SupervisorClient(hive.root, TIMEOUT * 2)
        root.terminate_child("gateway")
        assert not page_answers(port, hive.token)
        root.restart_child("gateway")
        hive.base = hive.daemon.endpoints.base_url(timeout=TIMEOUT)
        pages = served_pages(hive)
        assert pages["alice"] == port and pages["boss"] == state_of(hive, "boss")["web_port"]
        assert page_answers(port, hive.token)
        with hive.api(port) as page:
            assert page.get("/api/state").json()["agent"]["name"] == "alice"


def test_a_page_whose_port_is_held_says_so_and_comes_back_when_it_is_free(
    tmp_path: Path,
) -> None:
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:
        port = agent_port(hive, "alice")
        root = SupervisorClient(hive.root, TIMEOUT * 2)
        root.terminate_child("gateway")
        stranger = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            stranger.bind(("127.0.0.1", port))
            stranger.listen(1)
            root.restart_child("gateway")
            hive.base = hive.daemon.endpoints.base_url(timeout=TIMEOUT)
            # The dashboard is up; alice's page is not, and the dashboard says why.
            assert "alice" not in served_pages(hive)
            error = state_of(hive, "alice")["page_error"]
            assert f"port {port}" in error, error
            assert str(hive.daemon.hive.agent_paths("alice").state / PORT_FILE) in error
        finally:
            stranger.close()
        # The port is free again: the next look at the registry serves the page.
        assert served_pages(hive)["alice"] == port
        assert state_of(hive, "alice")["page_error"] is None
