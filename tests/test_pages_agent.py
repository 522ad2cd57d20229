"""An agent's page in a real headless Chromium, on the agent's own port: the ``/model`` slash
command changes the chip, ``/msg`` runs a turn that streams into the log, the stats charts are
drawn from ``/api/stats?agent=<name>``, and the xterm.js terminal runs a shell."""

from __future__ import annotations

from pathlib import Path

from hive_actors.store import Role
from tests.support.gateway import agent_port, gateway_hive, state_of
from tests.support.pages import MS, Tab, screenshot


def command(tab: Tab, line: str) -> None:
    tab.page.fill("#command", line)
    tab.page.press("#command", "Enter")


def log_has(tab: Tab, text: str, timeout: int = MS * 3) -> None:
    tab.page.locator("#log .line", has_text=text).first.wait_for(timeout=timeout)


def test_slash_commands_the_model_chip_the_log_and_the_charts(tmp_path: Path, tab: Tab) -> None:
    page = tab.page
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:
        port = agent_port(hive, "alice")
        page.goto(hive.login_url())  # the cookie covers every port of the host
        stats_urls: list[str] = []
        page.on("request", lambda r: stats_urls.append(r.url) if "/api/stats" in r.url else None)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.getElementById('agent-name').textContent === 'alice'")
        chip = page.locator("#model-chip")
        assert chip.inner_text() == "model · claude-sonnet-test"  # its configured model

        command(tab, "/model claude-opus-x")
        page.wait_for_function(
            "document.getElementById('model-chip').textContent === 'model · claude-opus-x'")
        log_has(tab, "model set to claude-opus-x")
        assert state_of(hive, "alice")["model"] == "claude-opus-x"

        command(tab, "/help")
        log_has(tab, "/msg <text>")
        command(tab, "/frobnicate now")
        log_has(tab, "unknown command /frobnicate")
        command(tab, "/model two words here")
        log_has(tab, "usage: /model")

        # A message runs a turn on the new model; it streams into the log live.
        command(tab, "/msg hello from the page")
        log_has(tab, "sent to alice")
        log_has(tab, "turn started (model claude-opus-x)", timeout=MS * 6)
        log_has(tab, "turn ended: ok", timeout=MS * 6)
        page.wait_for_function("document.getElementById('turns').textContent === '1 turns'")

        # The charts: ten uPlot plots over the agent's own series, redrawn after the turn
        # (tests/test_pages_charts.py checks each one's data).
        page.wait_for_function("document.querySelectorAll('#charts .uplot').length === 10")
        page.wait_for_function("Number(document.getElementById('charts').dataset.points) > 0")
        assert any("agent=alice" in url and "window=1h" in url for url in stats_urls), stats_urls

        # Cleared: the next turn runs the configured model; the last one ran claude-opus-x.
        command(tab, "/model -")
        page.wait_for_function(
            "document.getElementById('model-chip').textContent === 'model · claude-sonnet-test'"
            " && !document.getElementById('model-chip').classList.contains('override')"
            " && document.getElementById('model-last').textContent"
            " === 'last turn: claude-opus-x'")
        assert state_of(hive, "alice")["model_override"] is None
        screenshot(page, "agent-page")
        tab.check()


def test_the_terminal_runs_a_shell_in_the_agents_container(tmp_path: Path, tab: Tab) -> None:
    page = tab.page
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:
        port = agent_port(hive, "alice")
        page.goto(hive.login_url())
        page.goto(f"http://127.0.0.1:{port}/")
        page.click("#terminal-open")
        page.wait_for_function(
            "document.getElementById('terminal-status').textContent === 'connected'")
        # The shell's prompt first (keys typed before it would be echoed twice).
        page.wait_for_function(
            "document.querySelector('#terminal .xterm-rows').textContent.trim().length > 0")
        page.locator("#terminal .xterm-helper-textarea").focus()
        page.keyboard.type("echo marker-$((6*7)) in $(pwd)")
        page.keyboard.press("Enter")
        state_dir = hive.daemon.hive.agent_paths("alice").state
        page.wait_for_function(
            "document.querySelector('#terminal .xterm-rows').textContent"
            f".includes('marker-42 in {state_dir}')")
        screenshot(page, "agent-terminal")
        tab.check()
