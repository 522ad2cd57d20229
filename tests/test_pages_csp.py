"""The dashboard and an agent's page work under their Content-Security-Policy (enforced here,
unlike in the other page tests): they render, their websockets connect, the terminal and the
charts load, and the browser reports no violation (a violation is a console error)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hive_actors.httpd.middleware import CONTENT_SECURITY_POLICY
from hive_actors.store import Role
from tests.support.gateway import agent_port, gateway_hive
from tests.support.pages import new_tab


def test_the_pages_run_under_their_content_security_policy(tmp_path: Path, browser: Any) -> None:
    with gateway_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT}) as hive:
        with new_tab(browser, bypass_csp=False) as tab:
            response = tab.page.goto(f"{hive.base}/")
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            tab.page.wait_for_selector('tr[data-agent="alice"]')
            tab.page.locator("#live", has_text="live").wait_for()
            tab.check()
        with new_tab(browser, bypass_csp=False) as tab:
            response = tab.page.goto(f"http://127.0.0.1:{agent_port(hive, 'alice')}/")
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            tab.page.locator("#agent-name", has_text="alice").wait_for()
            tab.page.locator("#charts .uplot").first.wait_for()
            tab.page.click("#terminal-open")
            tab.page.locator("#terminal-status", has_text=re.compile(r"^connected$")).wait_for()
            tab.page.locator("#terminal .xterm-rows").first.wait_for()
            tab.check()
