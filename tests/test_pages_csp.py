"""The dashboard and an agent's page work under their Content-Security-Policy (enforced here,
unlike in the other page tests): they render, their websockets connect, the terminal and the
charts load, and the browser reports no violation (a violation is a console error). The login
form works under it too: a browser that never logged in is sent there and comes back."""

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
            response = tab.page.goto(hive.login_url())  # logs in, then the dashboard
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            tab.page.wait_for_selector('tr[data-agent="alice"]')
            tab.page.locator("#live", has_text="live").wait_for()
            tab.check()
        with new_tab(browser, bypass_csp=False) as tab:
            # A browser that never logged in: the page learns it from the API's 401 and goes
            # to the login form; the pasted token brings it back, logged in.
            url = f"http://127.0.0.1:{agent_port(hive, 'alice')}/"
            tab.page.goto(url)
            tab.page.wait_for_url(f"{url}login")
            refused = ("401", "Authentication failed")
            assert all(any(r in p for r in refused) for p in tab.problems), tab.problems
            tab.problems.clear()  # the refused requests before the login, and only those
            tab.page.fill("#token", hive.token)
            with tab.page.expect_navigation(url=url) as landed:
                tab.page.click("button[type=submit]")
            response = landed.value
            assert response is not None
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            tab.page.locator("#agent-name", has_text="alice").wait_for()
            tab.page.locator("#charts .uplot").first.wait_for()
            tab.page.click("#terminal-open")
            tab.page.locator("#terminal-status", has_text=re.compile(r"^connected$")).wait_for()
            tab.page.locator("#terminal .xterm-rows").first.wait_for()
            tab.check()
