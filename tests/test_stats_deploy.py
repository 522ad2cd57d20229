"""The shipped Grafana dashboard and Prometheus alert rules use only metrics that exist: every
metric name in every expression is checked against a live ``/metrics`` scrape (uvicorn on
127.0.0.1, port 0). With promtool on PATH (Debian package ``prometheus``) the rules also pass
``promtool check rules`` and promtool unit tests that make each alert fire."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hive_actors.protocol import TurnRecord
from hive_actors.stats import SampleNow
from hive_actors.store import MessageKind
from hive_actors.store.events import EventKind
from hive_actors.supervisors import SupervisorClient
from tests.support.mcp import serve
from tests.support.stats import T0, Crash, Hold, Noop, TelemetryRig, samples, turn_end
from tests.support.timeout import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "hive-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "hive-alerts.yml"
METRIC = re.compile(r"\bhive_[a-zA-Z0-9_:]*")


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression in the dashboard: panel targets, annotations, variables."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if var.get("type") == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def rule_exprs(rules: dict[str, Any]) -> list[str]:
    """Every rule expression, plus the queries inside annotation templates."""
    exprs = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            exprs.append(rule["expr"])
            for text in rule.get("annotations", {}).values():
                exprs += re.findall(r'query "([^"]+)"', text)
    return exprs


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    # PyYAML is a test dependency (setup.cfg [test]); without it only the rules checks skip.
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install PyYAML)")
    data: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return data


@pytest.fixture
def live_names(tmp_path: Path) -> Iterator[set[str]]:
    """Sample names of a scrape of a hive in which every kind of metric has a sample."""
    rig = TelemetryRig(tmp_path)
    release = threading.Event()
    try:
        # alice reports to the manager during her turn (hive_messages_sent_total) and has notes.
        rig.store.messages.send("alice", "manager", "done", MessageKind.PEER)
        notes = rig.hive.agent_paths("alice").state / "notes.md"
        notes.parent.mkdir(parents=True, exist_ok=True)
        notes.write_text("notes\n")
        rig.stats.tell(TurnRecord("alice", "t1", T0, T0 + 3,
                                  turn_end(duration_s=3.0, tools={"Bash": 1}), {"peer": 1}))
        rig.store.messages.send("manager", "alice", "hi", MessageKind.MANAGER)
        rig.store.events.record(EventKind.AGENT_RESTARTING, "bob", {"reason": "boom"})
        rig.stats.ask(SampleNow(), timeout=TIMEOUT)
        children = {
            c.id: c.ref for c in SupervisorClient(rig.supervisor, TIMEOUT).which_children()
            if c.ref is not None
        }
        children["bob"].tell(Crash())  # bob in backoff: hive_agent_backoff_seconds has a value
        assert rig.restarting.wait(TIMEOUT)
        held = threading.Event()
        children["alice"].tell(Hold(held, release))
        assert held.wait(TIMEOUT)
        children["alice"].tell(Noop())
        with serve(rig.app(), TIMEOUT) as base:
            response = httpx.get(f"{base}/metrics", timeout=TIMEOUT)
        release.set()
        assert response.status_code == 200
        yield {name for name, _ in samples(response.text)}
    finally:
        release.set()
        rig.close()


def check_exprs(source: str, exprs: list[str], live: set[str]) -> set[str]:
    """Assert every hive metric named in ``exprs`` has samples in ``live``; return the names."""
    assert exprs, f"no expressions found in the {source}"
    used: dict[str, list[str]] = {}
    for expr in exprs:
        names = METRIC.findall(expr)
        assert names, f"{source}: expression uses no hive metric: {expr}"
        for name in names:
            used.setdefault(name, []).append(expr)
    missing = {name: where for name, where in used.items() if name not in live}
    assert not missing, f"{source} uses metrics not exported: {json.dumps(missing, indent=1)}"
    return set(used)


def test_every_dashboard_metric_exists_in_a_live_scrape(
    dashboard: dict[str, Any], live_names: set[str]
) -> None:
    used = check_exprs("dashboard", dashboard_exprs(dashboard), live_names)
    # The required series are all charted somewhere.
    for required in ("hive_turns_total", "hive_turn_duration_seconds_bucket",
                     "hive_tool_calls_total", "hive_tokens_total", "hive_cost_usd_total",
                     "hive_inbox_depth", "hive_approvals_pending", "hive_agent_state",
                     "hive_agent_restarts_total", "hive_seconds_since_last_turn",
                     "hive_agents_given_up", "hive_actor_mailbox_depth"):
        assert required in used, f"{required} is exported but not charted"


def test_every_rule_metric_exists_in_a_live_scrape(
    rules: dict[str, Any], live_names: set[str]
) -> None:
    used = check_exprs("rules", rule_exprs(rules), live_names)
    assert {"hive_agent_state", "hive_seconds_since_last_turn", "hive_inbox_depth",
            "hive_approval_oldest_age_seconds", "hive_cost_usd_total"} <= used


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == [
        "Fleet overview", "Agent $agent", "Cost", "Messages, notes, approvals"
    ]
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Messages sent per turn, by recipient", "notes.md size", "Approval queue"} <= titles
    assert rows[1]["repeat"] == "agent"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["agent"]["query"]["query"] == "label_values(hive_agent_state, agent)"
    assert variables["datasource"]["type"] == "datasource"
    annotations = {a["name"]: a for a in dashboard["annotations"]["list"]}
    assert "hive_agent_restarts_total" in annotations["Restarts"]["expr"]
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


def test_rules_name_each_alert_once_with_severity_and_summary(rules: dict[str, Any]) -> None:
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    names = [r["alert"] for r in alerts]
    assert len(names) == len(set(names))
    assert {"HiveAgentGivenUp", "HiveAgentStalledBusy", "HiveAgentStalledInbox",
            "HiveApprovalWaiting", "HiveCostRateHigh"} <= set(names)
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus'): CI must install it")
    return found


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True,
        timeout=TIMEOUT * 3,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# promtool unit tests: each alert fires on the series that should trigger it, not before, and its
# annotations render (the query in HiveApprovalWaiting's template included). JSON is YAML.
SERIES = {
    'hive_agent_state{agent="alice",state="given_up"}': "0 0 1x30",
    'hive_agent_state{agent="bob",state="idle"}': "1x90",
    'hive_inbox_depth{agent="bob"}': "2x90",
    'hive_inbox_oldest_age_seconds{agent="bob"}': "0+60x90",
    'hive_seconds_since_last_turn{agent="bob"}': "0+60x90",
    'hive_agent_state{agent="carol",state="busy"}': "1x120",
    'hive_seconds_since_last_turn{agent="carol"}': "0+60x120",
    "hive_approvals_pending": "1x90",
    "hive_approval_oldest_age_seconds": "0+60x90",
    'hive_cost_usd_total{agent="dave",model="claude-opus-4"}': "0+0.5x90",
    'hive_web_resyncs_total{page="dashboard"}': "0x10 0+1x30",
}


def fires(minutes: int, alert: str, labels: dict[str, str], summary: str, description: str
          ) -> dict[str, Any]:
    return {
        "eval_time": f"{minutes}m",
        "alertname": alert,
        "exp_alerts": [{
            "exp_labels": labels,
            "exp_annotations": {"summary": summary, "description": description},
        }],
    }


def quiet(minutes: int, alert: str) -> dict[str, Any]:
    return {"eval_time": f"{minutes}m", "alertname": alert, "exp_alerts": []}


ALERT_TESTS: list[dict[str, Any]] = [
    quiet(1, "HiveAgentGivenUp"),
    fires(5, "HiveAgentGivenUp", {"severity": "critical", "agent": "alice", "state": "given_up"},
          "Agent alice was given up",
          "alice crashed more often than its restart limit allows and stays down until the "
          "operator revives it from the dashboard."),
    quiet(35, "HiveAgentStalledInbox"),
    fires(45, "HiveAgentStalledInbox", {"severity": "warning", "agent": "bob"},
          "Agent bob has unread mail and no turns",
          "bob has 2 undelivered message(s), the oldest over 30 minutes old, and no turn ended "
          "for over 30 minutes."),
    quiet(80, "HiveAgentStalledBusy"),
    fires(95, "HiveAgentStalledBusy", {"severity": "critical", "agent": "carol"},
          "Agent carol is busy with no turn ending",
          "carol has been busy for over 45 minutes and its last turn ended 1h 35m 0s ago. "
          "Look at its live turn log; stop or restart it."),
    quiet(60, "HiveApprovalWaiting"),
    fires(70, "HiveApprovalWaiting", {"severity": "warning"},
          "An approval has waited over an hour",
          "1 approval(s) pending; the oldest has waited 1h 10m 0s. The manager is blocked on "
          "it: decide it in the dashboard."),
    fires(80, "HiveAgentCostRateHigh", {"severity": "warning", "agent": "dave"},
          "Agent dave spends over $5 an hour",
          "dave spent at a rate of $30.00/h over the last hour: a runaway loop? Check its turn "
          "log; /model can switch it to a cheaper model."),
    fires(80, "HiveCostRateHigh", {"severity": "warning"},
          "The hive spends over $10 an hour",
          "The hive spent at a rate of $30.00/h over the last hour."),
    quiet(12, "HiveWebClientsFallingBehind"),
    fires(25, "HiveWebClientsFallingBehind", {"severity": "warning", "page": "dashboard"},
          "Browsers fall behind the hive's live events (dashboard pages)",
          "More than 5 websocket clients of the dashboard pages fell behind the live events in "
          "10 minutes and were fed from the event log instead: a slow link, or a web thread "
          "saturated by many open pages. The pages stay correct but lag."),
]


def test_promtool_unit_tests_make_each_alert_fire(tmp_path: Path) -> None:
    tool = promtool()
    spec = tmp_path / "hive-alerts.test.yml"
    spec.write_text(json.dumps({
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": k, "values": v} for k, v in SERIES.items()],
            "alert_rule_test": ALERT_TESTS,
        }],
    }, indent=1))
    result = subprocess.run(
        [tool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=TIMEOUT * 3
    )
    assert result.returncode == 0, result.stdout + result.stderr
