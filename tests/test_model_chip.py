"""The model chip tells the truth (issue 19, items 2 and 6).

``/api/state`` rows carry ``model_next`` (what the next turn will use: the override, else the
agent's configured model — its applied ``agent.toml``'s, else the hive default — never a
cleared override, never a placeholder), ``model_override`` (None when cleared) and
``model_last`` (what the last turn ran with, None before any). The agent page's chip shows
``model_next``, and "last turn: x" beside it when they differ: checked in Chromium after
``/model x``, ``/model -``, an agent restart and a start-up's reset of the overrides.
"""

from __future__ import annotations

from pathlib import Path

from hive_actors.gateway.reads import HiveReader
from hive_actors.gateway.views import AgentTally, agent_view
from hive_actors.store import AgentState, EventKind, Role
from hive_actors.supervisors.client import SupervisorClient
from tests.support.gateway import Hive, agent_port, gateway_hive, state_of, wait_state
from tests.support.hive import send
from tests.support.pages import MS, Tab, screenshot
from tests.support.store import WallClock, open_store
from tests.support.timeout import TIMEOUT

CONFIGURED = "claude-sonnet-test"
"""The test hive's ``[model] default``, written into every new agent's agent.toml."""


# -- the rows ---------------------------------------------------------------------------------


def test_the_rows_say_what_the_next_and_the_last_turn_use(tmp_path: Path) -> None:
    clock = WallClock()
    path = tmp_path / "hive.db"
    toml = tmp_path / "alice" / "config" / "applied" / "agent.toml"
    toml.parent.mkdir(parents=True)
    with open_store(path, clock) as store:
        store.registry.register("alice", role=Role.AGENT)
        reader = HiveReader(
            lambda: open_store(path, clock), lambda name: tmp_path / name / "state",
            default_model="claude-hive-default",
        )
        try:
            def row() -> dict[str, object]:
                state = reader.agent_state("alice")["agent"]
                return {k: state[k] for k in ("model_next", "model_override", "model_last")}

            # No agent.toml readable: the hive default (never "default", never None).
            assert row() == {"model_next": "claude-hive-default", "model_override": None,
                             "model_last": None}
            toml.write_text('model = "claude-configured"\n')
            clock.t += 1
            store.events.record(EventKind.AGENT_STATE, "alice", {"to": "idle"})  # a new snapshot
            assert row()["model_next"] == "claude-configured"
            # An agent.toml without a model: the hive default again.
            toml.write_text("[limits]\nmax_turns = 3\n")
            store.events.record(EventKind.AGENT_STATE, "alice", {"to": "idle"})
            assert row()["model_next"] == "claude-hive-default"
            toml.write_text('model = "claude-configured"\n')

            store.models.set_model("alice", "claude-opus-x")
            assert row() == {"model_next": "claude-opus-x", "model_override": "claude-opus-x",
                             "model_last": None}
            store.events.record(EventKind.TURN_STARTED, "alice",
                                {"turn_id": "t1", "model": "claude-opus-x", "messages": [1]})
            assert row()["model_last"] == "claude-opus-x"
            store.models.set_model("alice", None)
            assert row() == {"model_next": "claude-configured", "model_override": None,
                             "model_last": "claude-opus-x"}
            # The older names stay for API clients, with the new meaning.
            state = reader.agent_state("alice")["agent"]
            assert (state["model"], state["model_in_use"]) == (None, "claude-configured")
        finally:
            reader.close()


def test_agent_view_never_shows_a_cleared_override() -> None:
    from hive_actors.store.records import Agent

    agent = Agent("alice", Role.AGENT, 1, AgentState.IDLE, None, None, False, False, 0.0, 0.0)
    view = agent_view(agent, inbox_depth=0, inbox_oldest_age=0.0,
                      tally=AgentTally(turns=1, model="claude-opus-x"), state_kept=False,
                      configured_model="claude-sonnet-x")
    assert (view["model_next"], view["model_override"], view["model_last"]) == (
        "claude-sonnet-x", None, "claude-opus-x")


# -- the chip in Chromium ----------------------------------------------------------------------


def command(tab: Tab, line: str) -> None:
    tab.page.fill("#command", line)
    tab.page.press("#command", "Enter")


def chip_is(tab: Tab, model: str, *, override: bool, last: str | None) -> None:
    """Wait until the chip shows ``model`` (an override or not) and "last turn: ``last``"
    beside it (None: nothing beside it)."""
    shown = f"'last turn: {last}'" if last else "''"
    visible = "true" if last else "false"
    tab.page.wait_for_function(
        "(() => { const c = document.getElementById('model-chip');"
        " const l = document.getElementById('model-last');"
        f" return c.textContent === 'model · {model}'"
        f" && c.classList.contains('override') === {str(override).lower()}"
        f" && l !== null && l.textContent === {shown} && !l.hidden === {visible}; }})()",
        timeout=MS * 3,
    )


def row_models(hive: Hive) -> tuple[object, object, object]:
    row = state_of(hive, "alice")
    return row["model_next"], row["model_override"], row["model_last"]


def run_turn(hive: Hive, tab: Tab, model: str) -> None:
    after = hive.last_event_id()
    send(hive.daemon, "alice", "hello")
    started = hive.wait_for(lambda e: e.kind == EventKind.TURN_STARTED and e.agent == "alice",
                            after=after)
    assert started.payload["model"] == model
    hive.wait_for(lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "alice",
                  after=started.id)
    wait_state(hive, "alice", AgentState.IDLE, after=after)


def no_problem_but_the_charts(tab: Tab, failed: list[str]) -> None:
    """Like ``tab.check()``, but a failed ``/api/stats`` load (the charts', whose code and
    queries change apart from the chip) is not this test's business."""
    assert [u for u in failed if "/api/stats" not in u] == [], failed
    loads = "console error: Failed to load resource"
    assert [p for p in tab.problems if not p.startswith(loads)] == [], tab.problems
    assert sum(p.startswith(loads) for p in tab.problems) <= len(failed), (tab.problems, failed)


def test_the_chip_after_model_x_model_clear_and_a_restart(tmp_path: Path, tab: Tab) -> None:
    page = tab.page
    failed: list[str] = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:
        port = agent_port(hive, "alice")
        page.goto(hive.login_url())
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.getElementById('agent-name').textContent === 'alice'")
        # Before any turn: the configured model, nothing beside it.
        chip_is(tab, CONFIGURED, override=False, last=None)
        assert row_models(hive) == (CONFIGURED, None, None)

        command(tab, "/model claude-opus-x")
        chip_is(tab, "claude-opus-x", override=True, last=None)
        run_turn(hive, tab, "claude-opus-x")
        chip_is(tab, "claude-opus-x", override=True, last=None)  # the same: nothing beside
        assert row_models(hive) == ("claude-opus-x", "claude-opus-x", "claude-opus-x")

        # Cleared: the next turn runs the configured model; the last one ran claude-opus-x.
        command(tab, "/model -")
        chip_is(tab, CONFIGURED, override=False, last="claude-opus-x")
        assert row_models(hive) == (CONFIGURED, None, "claude-opus-x")
        command(tab, "/model")
        tab.page.locator("#log .line", has_text=f"the next turn uses {CONFIGURED} (configured)"
                         ).first.wait_for(timeout=MS * 3)
        screenshot(page, "model-chip-cleared")

        # A persisted override, then the agent restarts: the chip still says what the next
        # turn uses, and that turn uses it.
        command(tab, "/model claude-haiku-x --persist")
        chip_is(tab, "claude-haiku-x", override=True, last="claude-opus-x")
        agents = SupervisorClient(hive.daemon.hive.directory.get("agents"), TIMEOUT * 2)
        after = hive.last_event_id()
        agents.terminate_child("alice")
        agents.restart_child("alice")
        wait_state(hive, "alice", AgentState.IDLE, after=after)
        page.reload()
        page.wait_for_function("document.getElementById('agent-name').textContent === 'alice'")
        chip_is(tab, "claude-haiku-x", override=True, last="claude-opus-x")
        run_turn(hive, tab, "claude-haiku-x")
        chip_is(tab, "claude-haiku-x", override=True, last=None)
        screenshot(page, "model-chip-after-restart")

        # A non-persisted override, then the hive's start-up reset: the persisted file was
        # removed by it, so the override is cleared and the chip falls back to the config.
        command(tab, "/model claude-temp-x")
        chip_is(tab, "claude-temp-x", override=True, last="claude-haiku-x")
        with hive.daemon.hive.open_store() as store:
            assert store.models.reload() == {"alice": None}
        hive.daemon.hive.bell.ring()
        chip_is(tab, CONFIGURED, override=False, last="claude-haiku-x")
        assert row_models(hive) == (CONFIGURED, None, "claude-haiku-x")
        run_turn(hive, tab, CONFIGURED)
        chip_is(tab, CONFIGURED, override=False, last=None)
        screenshot(page, "model-chip-reset")
        no_problem_but_the_charts(tab, failed)
