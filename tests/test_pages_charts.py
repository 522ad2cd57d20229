"""The telemetry charts in a real headless Chromium: an agent's page draws every chart from
``/api/stats`` after a few real turns (the loopback model scripts the tool calls), the window
picker changes the query, an agent without turns shows the empty state, a bad window is a clear
error on the page, and the dashboard draws the approval queue. Each chart is checked through
the page's own state (``window.hiveCharts``: the uPlot instance and its data), never pixels."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hive_actors.protocol import RequestApproval
from hive_actors.stats import FlushStats, SampleNow
from hive_actors.store import AgentState, ApprovalKind, Role
from tests.support.gateway import Hive, agent_port, gateway_hive, wait_state
from tests.support.pages import Tab, new_tab, screenshot

CHARTS = (
    "turns", "tools-per-turn", "duration", "exits", "inbox", "sent", "received", "tool-usage",
    "since-last-turn", "notes",
)
TURN_CHARTS = ("turns", "tools-per-turn", "duration", "exits", "sent", "received", "tool-usage")

STATE = """() => {
  const s = window.hiveCharts;
  const charts = {};
  for (const [id, c] of Object.entries(s.charts)) {
    const data = c.plot ? c.plot.data : [];
    charts[id] = {
      empty: c.empty, points: c.points, series: c.series,
      canvas: Boolean(document.querySelector(`#chart-${id} canvas`)),
      emptyNote: Boolean(document.querySelector(`#chart-${id} .chart-empty`)),
      xs: data.length ? data[0].length : 0,
      values: data.slice(1).map((col) => col.filter((v) => v !== null && v !== undefined)),
    };
  }
  return {window: s.window, url: s.url, step: s.step, error: s.error, charts};
}"""


def charts_state(tab: Tab) -> dict[str, Any]:
    state: dict[str, Any] = tab.page.evaluate(STATE)
    return state


def tool(name: str, **args: Any) -> str:
    return f"@tool {name} {json.dumps(args)}"


def run_turn(hive: Hive, port: int, text: str) -> None:
    """Message alice from the operator and wait until the turn ended and she is idle again (her
    turn record is told to the stats service before that), then write the stats rows."""
    after = hive.last_event_id()
    with hive.api(port) as client:
        client.post("/api/message", data={"text": text}).raise_for_status()
    hive.wait_for(lambda e: e.agent == "alice" and e.kind == "turn.ended", after=after)
    wait_state(hive, "alice", AgentState.IDLE, after=after)
    hive.ask("stats", FlushStats())


def test_every_chart_is_drawn_the_window_picker_and_the_errors(tmp_path: Path, tab: Tab) -> None:
    page = tab.page
    roles = {"boss": Role.MANAGER, "alice": Role.AGENT, "bob": Role.AGENT}
    with gateway_hive(tmp_path, roles) as hive:
        port = agent_port(hive, "alice")
        page.goto(hive.login_url())  # the cookie covers every port of the host
        stats_urls: list[str] = []
        page.on("request", lambda r: stats_urls.append(r.url) if "/api/stats" in r.url else None)

        # Before any turn: the charts are there, in their empty state.
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("window.hiveCharts && window.hiveCharts.step !== null")
        empty = charts_state(tab)
        assert sorted(empty["charts"]) == sorted(CHARTS)
        for chart in TURN_CHARTS:
            assert empty["charts"][chart]["empty"], chart
            assert empty["charts"][chart]["emptyNote"] and empty["charts"][chart]["canvas"], chart
        assert page.locator("#chart-turns .chart-empty").inner_text() == (
            "turns / min: no data in the last hour")

        # Two turns: alice reports to the manager and tells a peer, then answers plainly.
        notes = hive.daemon.hive.agent_paths("alice").state / "notes.md"
        notes.write_text("# notes\n" + "learned something\n" * 200)
        run_turn(hive, port, "\n".join([
            tool("mcp__hive__send", to="boss", body="status: done"),
            tool("mcp__hive__send", to="bob", body="your turn"),
            "@say reported",
        ]))
        run_turn(hive, port, "@say nothing to do")
        hive.ask("stats", SampleNow())  # inbox depth, time since the last turn, notes size

        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function(
            "window.hiveCharts && Object.keys(window.hiveCharts.charts).length === "
            f"{len(CHARTS)} && Object.values(window.hiveCharts.charts).every((c) => !c.empty)")
        state = charts_state(tab)
        assert state["window"] == "1h" and state["step"] == 60 and state["error"] is None
        for chart in CHARTS:
            drawn = state["charts"][chart]
            assert drawn["canvas"] and not drawn["emptyNote"], (chart, drawn)
            assert drawn["xs"] > 0 and drawn["points"] > 0, (chart, drawn)
            assert any(drawn["values"]), (chart, drawn)
        charts = state["charts"]
        assert sum(sum(v) for v in charts["turns"]["values"]) > 0
        # Sent per turn, by recipient: the manager and a peer, nothing to the operator.
        sent = dict(zip(charts["sent"]["series"], charts["sent"]["values"], strict=True))
        assert max(sent["manager"]) > 0 and max(sent["peer"]) > 0
        assert max(sent["operator"], default=0) == 0
        received = dict(zip(charts["received"]["series"], charts["received"]["values"],
                            strict=True))
        assert max(received["operator"]) > 0
        tools = charts["tool-usage"]["series"]
        assert any(label.startswith("mcp__hive__send · 2") for label in tools), tools
        assert any(label.startswith("ok · 2") for label in charts["exits"]["series"])
        assert any(label.startswith("compaction at 16") for label in charts["notes"]["series"])
        assert any("window=1h" in url and "turns" in url for url in stats_urls), stats_urls
        assert any("keys=tool.*" in url or "keys=tool.%2A" in url for url in stats_urls)
        screenshot(page, "agent-charts")
        tab.check()

        # The window picker asks the server for another window and redraws.
        stats_urls.clear()
        page.click('#stats-window button[data-window="24h"]')
        page.wait_for_function(
            "window.hiveCharts.window === '24h' && window.hiveCharts.step === 600")
        assert any("window=24h" in url for url in stats_urls), stats_urls
        assert page.locator("#stats-section h2 .hint").inner_text() == "last 24 h"
        assert not charts_state(tab)["charts"]["turns"]["empty"]
        tab.check()

        # A window the server refuses: the reason, on the page, where the charts are.
        page.goto(f"http://127.0.0.1:{port}/?window=2y")
        page.wait_for_function("window.hiveCharts && window.hiveCharts.error !== null")
        note = page.locator("#stats-note")
        assert "error" in (note.get_attribute("class") or "")
        assert "window='2y' is not a window" in note.inner_text()
        assert "15m, 1h, 24h, 7d" in note.inner_text()

        # A stuck agent stands out: stopped, a message waiting, no turn for 20 minutes (the
        # page's clock runs 20 minutes ahead; the time since the last turn is computed live).
        with hive.api() as client:
            client.post("/api/agents/alice/stop").raise_for_status()
        wait_state(hive, "alice", AgentState.STOPPED)
        with hive.api(port) as client:
            client.post("/api/message", data={"text": "are you there?"}).raise_for_status()
        page.clock.install(time=time.time() + 20 * 60)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("window.hiveCharts && window.hiveCharts.stuck === true")
        badge = page.locator("#chart-since-last-turn .stuck-badge")
        assert "min without a turn, 1 message(s) waiting" in badge.inner_text()
        assert "stuck" in (page.locator("#chart-since-last-turn").get_attribute("class") or "")
        label = charts_state(tab)["charts"]["since-last-turn"]["series"][0]
        assert label.startswith("now 2") and label.endswith(" min"), label
        screenshot(page, "agent-charts-stuck")


def test_the_dashboard_charts_the_approval_queue(tmp_path: Path, tab: Tab, browser: Any) -> None:
    page = tab.page
    with gateway_hive(tmp_path, {"boss": Role.MANAGER}) as hive:
        # Under the page's Content-Security-Policy (enforced in this tab only: the other waits
        # evaluate with eval): the chart library the dashboard loads on first use is allowed.
        with new_tab(browser, bypass_csp=False) as strict:
            strict.page.goto(hive.login_url())
            strict.page.wait_for_selector("#approval-chart canvas")
            strict.check()

        page.goto(hive.login_url())  # logs in, then the dashboard
        page.wait_for_function("window.hiveApprovalChart && window.hiveApprovalChart.plot")
        assert page.evaluate("window.hiveApprovalChart.empty") is True
        assert "no approval-queue samples" in page.locator("#approval-chart-note").inner_text()

        hive.ask("approvals", RequestApproval(
            ApprovalKind.SPAWN, "carol", "boss", diff=hive.daemon.desk.spawn_diff("carol")))
        hive.ask("stats", SampleNow())  # approvals.pending = 1 now
        page.reload()
        page.wait_for_function(
            "window.hiveApprovalChart && window.hiveApprovalChart.plot"
            " && window.hiveApprovalChart.points > 0")
        drawn = page.evaluate("""() => {
          const c = window.hiveApprovalChart;
          return {url: c.url, error: c.error, label: c.plot.series[1].label,
                  values: c.plot.data[1].filter((v) => v !== null),
                  canvas: Boolean(document.querySelector('#approval-chart canvas'))};
        }""")
        assert drawn["canvas"] and drawn["error"] is None
        assert "agent=_hive" in drawn["url"] and "window=24h" in drawn["url"]
        assert max(drawn["values"]) == 1
        assert drawn["label"].startswith("pending · now 1")
        screenshot(page, "dashboard-approval-chart")
        tab.check()
