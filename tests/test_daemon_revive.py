"""The manager really reacts — the whole daemon, the real CLI (issue 15).

``hive serve`` runs as a subprocess (:mod:`tests.support.daemon`) with a manager ``boss`` and an
agent ``eve``. eve's fault is outside the hive, as a real one is: whenever eve is up (idle), a
thread of the test SIGKILLs its container (the keeper process of the process backend), until
the fault is "fixed". With ``[supervision] agent_max_consecutive_failures = 3`` eve crashes,
is restarted twice (two restart notices), and is given up (a give-up notice).

The loopback model stands in for the manager's judgement (:class:`ReactingModel`): to a turn
prompt carrying eve's rendered give-up notice it answers with ``mcp__hive__agent_status``, then
(the fault is fixed once agent_status has answered) ``mcp__hive__revive``, then a final text.
Everything is checked as the operator and the model see it: the manager's prompts as the
model server received them, the tool results the CLI sent back, ``/api/state``,
``/api/events`` and ``/api/approvals`` over HTTP, and, while the daemon is down, the sqlite file.

* ``sigterm`` / ``kill9``: the daemon ends — by SIGTERM or kill -9 — in the middle of the
  manager's reaction (after agent_status answered, the model holds the revive step), so the
  give-up and the manager's notice must outlive the daemon: eve is still given up after the
  restart (and not started by it), the notice is handed to the manager again (marked
  redelivered), and the revive happens in the next run; eve then runs and answers a message.
* ``approval``: ``revive_needs_approval = true``: the manager's revive lands in the approval
  queue, eve stays given up until the operator approves it over HTTP, then runs and answers.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest

from hive_actors.agent.notices import parse_notice
from hive_actors.modelserver.conversation import (
    is_compaction_request,
    newest_prompt,
    tool_exchanges_after,
)
from hive_actors.modelserver.replies import ToolUseBlock, text_reply, tool_use_reply
from hive_actors.store import AgentState, Role
from tests.support.daemon import DaemonProcess, RecordingModel, wait_until

AGENT = "eve"
MANAGER = "boss"
FAILURES = 3
"""``agent_max_consecutive_failures``: eve is given up at its third crash in a row."""
RESTARTS = 10
"""``agent_restarts`` (in ``agent_period`` s): never reached, so the give-up is ``consecutive``."""
PERIOD = 600.0
BACKOFF = 0.2
SUPERVISION = {
    "agent_max_consecutive_failures": FAILURES, "agent_restarts": RESTARTS,
    "agent_period": PERIOD, "backoff_min": BACKOFF, "backoff_max": 1.0,
    "backoff_factor": 2.0, "backoff_jitter": 0.0,
}
STEPS = ("mcp__hive__agent_status", "mcp__hive__revive")
NOTICE_HEAD = f"supervision notice: agent {AGENT}"


# -- the manager's judgement ----------------------------------------------------------------------


@dataclass
class Reaction:
    """The manager's reaction to eve's give-up notice during one daemon run."""

    epoch: int
    prompt: str
    results: dict[str, str]
    """Each step's tool result, as the CLI sent it back."""
    revive_asked_at: float | None = None
    """Wall time the model asked for the revive (the daemon's events are stamped alike)."""


class ReactingModel(RecordingModel):
    """The recording model server, whose manager answers eve's give-up notice with
    ``agent_status`` then ``revive`` — or, in a run of ``hold_runs``, with ``agent_status`` and
    then no answer at all (the model "thinks" until the daemon is gone)."""

    def __init__(self, fault: KeeperKiller | None = None, hold_runs: frozenset[int] = frozenset()
                 ) -> None:
        super().__init__()
        self.fault = fault
        self.hold_runs = hold_runs
        self.held = threading.Event()
        """Set when a held run's reaction stopped before the revive."""
        self.reactions: dict[int, Reaction] = {}
        self._react_lock = threading.Lock()

    def _policy(self, body: Mapping[str, Any]) -> Any:
        default = super()._policy(body)  # records the full prompt
        prompt = newest_prompt(body)
        if (prompt is None or is_compaction_request(body) or NOTICE_HEAD not in prompt.text
                or "given up after" not in prompt.text
                or f"new message(s) for {MANAGER}:" not in prompt.text):
            return default
        epoch = self.epoch
        done = tool_exchanges_after(body, prompt)
        with self._react_lock:
            reaction = self.reactions.setdefault(epoch, Reaction(epoch, prompt.text, {}))
            for exchange in done:
                if exchange.result is not None:
                    reaction.results[exchange.name] = exchange.result
        if len(done) == 1 and self.fault is not None:
            self.fault.fix()  # what agent_status showed is put right before the revive
        if len(done) == 1 and epoch in self.hold_runs:
            self.held.set()
            return text_reply("(still thinking)", delay_s=600.0)  # until the client is gone
        if len(done) < len(STEPS):
            name = STEPS[len(done)]
            if name == "mcp__hive__revive":
                reaction.revive_asked_at = time.time()
            seed = f"{epoch}:{prompt.text}:{prompt.message_index}:{len(done)}".encode()
            block = ToolUseBlock(id="toolu_" + hashlib.sha256(seed).hexdigest()[:24], name=name,
                                 input={"name": AGENT})
            return tool_use_reply(block)
        return text_reply(f"{AGENT} looked at and revived", kind="final")


# -- the fault ------------------------------------------------------------------------------------


class KeeperKiller:
    """A thread that SIGKILLs eve's container (its keeper process) each time eve is up, until
    :meth:`fix`. One kill per incarnation: after a kill, eve must be seen not idle (crashed,
    backing off, starting) before the next."""

    def __init__(self, daemon: DaemonProcess, agent: str, limit: int = 20) -> None:
        self.daemon = daemon
        self.agent = agent
        self.limit = limit
        self.kills: list[tuple[int, float]] = []
        self.fixed_at: float | None = None
        self._armed = threading.Event()
        self._armed.set()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="keeper-killer", daemon=True)

    def fix(self) -> None:
        if self._armed.is_set():
            self.fixed_at = time.time()
            self._armed.clear()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(30)

    def _keepers(self) -> list[int]:
        pids = []
        for pid, cmd in self.daemon.session_processes():
            if "hive_actors.containers.keeper" not in cmd or "--name" not in cmd:
                continue
            if cmd.split("--name", 1)[1].split()[:1] == [self.agent]:
                pids.append(pid)
        return pids

    def _run(self) -> None:
        killed: set[int] = set()
        seen_down = True
        try:
            # Bounded: at most one probe per 0.1 s for 10 minutes.
            for _ in range(6000):
                if self._stop.is_set() or len(self.kills) >= self.limit:
                    return
                if self._armed.is_set() and self.daemon.running:
                    state = self.daemon.agents().get(self.agent, {}).get("state")
                    if state != "idle":
                        seen_down = True
                    elif seen_down:
                        for pid in self._keepers():
                            if pid in killed or not self._armed.is_set():
                                continue
                            try:
                                os.kill(pid, signal.SIGKILL)
                            except ProcessLookupError:
                                continue
                            killed.add(pid)
                            self.kills.append((pid, time.time()))
                            seen_down = False
                self._stop.wait(0.1)  # pacing of the probe, not a wait for a condition
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


# -- reading what the manager received -------------------------------------------------------------


_RENDERED = re.compile(
    r"supervision notice: agent (?P<agent>\S+) \(generation (?P<generation>\d+)\) "
    r"(?P<what>crashed|stalled|failed to start)\n"
    r"result: (?P<result>[^\n(]+?)(?: \((?P<status>[^)\n]*)\))?\n"
    r"reason: (?P<reason>[^\n]*)\n"
    r"(?:restart (?P<restart>\d+) of (?P<of>\d+) in (?P<period>[\d.]+) s; "
    r"next try in (?P<next>[\d.]+) s"
    r"|given up after (?P<crashes>\d+) failures in a row: it stays down until revived "
    r"\(mcp__hive__agent_status, mcp__hive__revive\))\n"
    r"notice: (?P<text>[^\n]*)"
)


@dataclass(frozen=True)
class RenderedNotice:
    """One supervision notice as the manager's turn prompt showed it."""

    message_id: int
    epoch: int
    redelivered: bool
    fields: dict[str, str | None]


def notices_received(model: RecordingModel, agent: str) -> list[RenderedNotice]:
    """Every supervision notice about ``agent`` the manager's turns carried, in order (a notice
    handed over again appears again, redelivered)."""
    out = []
    for turn in model.turns(MANAGER):
        for delivery in turn.deliveries:
            if (delivery.sender, delivery.kind) != ("hive", "system"):
                continue
            assert '"hive_notice"' not in delivery.body, delivery.body  # text, not JSON
            if not delivery.body.startswith("supervision notice:"):
                continue  # another system message (an approval's decision, say)
            match = _RENDERED.match(delivery.body)
            assert match is not None, f"a notice not rendered in full:\n{delivery.body}"
            if match["agent"] == agent:
                out.append(RenderedNotice(delivery.message_id, turn.epoch, delivery.redelivered,
                                          match.groupdict()))
    return out


def _state(daemon: DaemonProcess, name: str) -> str | None:
    return daemon.agents().get(name, {}).get("state")


def _report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n{line}")


# -- the checks shared by the cases ---------------------------------------------------------------


def _given_up_through_notices(daemon: DaemonProcess, model: ReactingModel,
                              killer: KeeperKiller) -> RenderedNotice:
    """Wait for eve's give-up and for the manager's prompts to show every notice of it; check
    the notices' fields; the give-up notice as the manager first received it."""
    wait_until(lambda: _state(daemon, AGENT) == "given_up", 120, f"{AGENT} given up",
               describe=daemon.describe)
    assert killer.error is None, killer.error
    assert len(killer.kills) == FAILURES, killer.kills

    def all_told() -> list[RenderedNotice] | None:
        got = notices_received(model, AGENT)
        return got if any(n.fields["crashes"] for n in got) else None

    notices = wait_until(all_told, 60, "the give-up notice in a turn prompt of the manager",
                         describe=daemon.describe)
    first: dict[int, RenderedNotice] = {}
    for notice in notices:
        first.setdefault(notice.message_id, notice)
    ordered = sorted(first.values(), key=lambda n: n.message_id)
    assert len(ordered) == FAILURES, [n.fields for n in ordered]
    generations = []
    for i, notice in enumerate(ordered, 1):
        f = notice.fields
        generations.append(int(f["generation"] or 0))
        # result and exit status: the container was SIGKILLed.
        assert (f["agent"], f["what"], f["result"]) == (AGENT, "crashed", "signal"), f
        assert f["status"] == "signal 9", f
        assert f["reason"] == "signal SIGKILL (9)", f
        assert not notice.redelivered, notice
        if i < FAILURES:  # restart n of m, next try
            assert (f["restart"], f["of"], f["period"]) == (str(i), str(RESTARTS), f"{PERIOD:g}"), f
            assert float(f["next"] or "nan") == pytest.approx(BACKOFF * 2 ** (i - 1)), f
            assert f["crashes"] is None and f["text"] == (
                f"{AGENT} crashed: signal SIGKILL (9); restart {i} of {RESTARTS} in "
                f"{PERIOD:g} s; next try in {f['next']} s"), f
        else:  # given up, no next try
            assert f["restart"] is None and f["crashes"] == str(FAILURES), f
            assert f["text"] == (
                f"{AGENT} given up after {FAILURES} failures in a row (limit [supervision] "
                f"agent_max_consecutive_failures = {FAILURES}); last: signal SIGKILL (9); "
                "it stays down until the operator revives it"), f
    # A restart is no new incarnation (only a destroyed name registered again is): every
    # notice names the one generation of eve.
    assert len(set(generations)) == 1 and generations[0] >= 1, generations
    return ordered[-1]


def _check_status(result: str, generation: str) -> None:
    """agent_status's result: given up, its restarts, the last crash, the notice, a log tail."""
    assert f"agent {AGENT} (agent, generation {generation}): given_up" in result, result
    assert f"restarts: {FAILURES - 1} " in result, result
    assert re.search(r"^last crash: signal SIGKILL \(9\) \(\d+ s ago", result, re.MULTILINE), result
    assert (f"last notice: {AGENT} given up after {FAILURES} failures in a row" in result), result
    assert "log tail" in result, result


def _runs_again(daemon: DaemonProcess, model: ReactingModel, marker: str) -> None:
    """eve is up and takes a turn: a message sent to it reaches its turn prompt, answered."""
    wait_until(lambda: _state(daemon, AGENT) == "idle", 90, f"{AGENT} up again",
               describe=daemon.describe)
    turns = daemon.turns_of(AGENT)
    got = daemon.message(AGENT, f"{marker} are you back?")
    assert got.ok, got
    daemon.wait_turns(AGENT, turns, timeout=60)
    wait_until(lambda: model.received(AGENT, marker), 30, f"{marker} in a turn of {AGENT}",
               describe=daemon.describe)
    assert _state(daemon, AGENT) in ("idle", "busy"), daemon.describe()


def _started_by_notice(events: list[dict[str, Any]], ended: dict[str, Any],
                       message_id: int) -> None:
    """The manager's turn that ended with ``ended`` was started with the notice in it."""
    started = [e for e in events if e["kind"] == "turn.started" and e["agent"] == MANAGER
               and e["payload"].get("turn_id") == ended["payload"].get("turn_id")]
    assert len(started) == 1, (ended, started)
    assert message_id in started[0]["payload"]["messages"], started


def _spawns_after(events: list[dict[str, Any]], given_up_id: int) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == "agent.spawned" and e["agent"] == AGENT
            and e["id"] > given_up_id]


# -- the cases ------------------------------------------------------------------------------------


@pytest.fixture
def hive(tmp_path: Path, request: pytest.FixtureRequest
         ) -> Iterator[tuple[ReactingModel, DaemonProcess, KeeperKiller]]:
    case = request.param
    hold = frozenset({1}) if case in ("sigterm", "kill9") else frozenset()
    model = ReactingModel(hold_runs=hold)
    model.start()
    supervision = {**SUPERVISION, "revive_needs_approval": case == "approval"}
    daemon = DaemonProcess(tmp_path, model, supervision=supervision)
    killer = KeeperKiller(daemon, AGENT)
    model.fault = killer
    try:
        yield model, daemon, killer
    finally:
        killer.__exit__()
        daemon.close()
        model.stop()


@pytest.mark.parametrize("hive", ["sigterm", "kill9"], indirect=True)
def test_the_manager_revives_a_given_up_agent_across_a_daemon_restart(
    hive: tuple[ReactingModel, DaemonProcess, KeeperKiller], request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, daemon, killer = hive
    how = request.node.callspec.params["hive"]
    began = time.monotonic()
    daemon.register({MANAGER: Role.MANAGER, AGENT: Role.AGENT})
    with killer:
        daemon.start()
        daemon.wait_ready()
        give_up = _given_up_through_notices(daemon, model, killer)
        # The manager's turn for the give-up: agent_status answered, the revive not asked yet.
        wait_until(model.held.is_set, 60, "the manager's reaction, held before the revive",
                   describe=daemon.describe)
        held = model.reactions[1]
        _check_status(held.results["mcp__hive__agent_status"], give_up.fields["generation"] or "")
        assert "mcp__hive__revive" not in held.results and held.revive_asked_at is None
        assert killer.fixed_at is not None
        events_before = daemon.events()
        # The daemon ends in the middle of the manager's reaction.
        if how == "sigterm":
            code = daemon.terminate(timeout=60)
            assert code == 0, daemon.exits
        else:
            daemon.kill9()
        # What the file keeps: eve given up, the notice not done with.
        with daemon.store() as store:
            row = store.registry.get(AGENT)
            pending = [parse_notice(m.body) for m in store.messages.undelivered(MANAGER)]
        assert row.state is AgentState.GIVEN_UP, row
        assert any(n is not None and n.agent == AGENT and n.given_up for n in pending), pending
        # The next run: eve stays down until the manager, told again, revives it.
        daemon.start()
        daemon.wait_ready()
        wait_until(lambda: "mcp__hive__revive" in model.reactions.get(2, held).results, 90,
                   "the manager's revive in the daemon's next run", describe=daemon.describe)
        again = model.reactions[2]
        _runs_again(daemon, model, "m-eve-1")
    assert killer.error is None, killer.error
    # The notice came again after the restart, marked redelivered, and started the turn.
    redelivered = [n for n in notices_received(model, AGENT)
                   if n.message_id == give_up.message_id and n.epoch == 2]
    assert redelivered and redelivered[0].redelivered, notices_received(model, AGENT)
    assert "(redelivered)" in again.prompt and "given up after" in again.prompt
    # agent_status in the new run still shows the give-up (it survived the restart); revive ok.
    _check_status(again.results["mcp__hive__agent_status"], give_up.fields["generation"] or "")
    assert again.results["mcp__hive__revive"] in (
        f"{AGENT} revived: it is up again, its failures forgotten",
        f"{AGENT} revived: it is starting (not up yet); check agent_status in a while",
    ), again.results
    events = daemon.events()
    given_up = [e for e in events if e["kind"] == "agent.given_up" and e["agent"] == AGENT]
    assert len(given_up) == 1, given_up
    # eve did not start between the give-up and the revive — neither in run 1 nor by run 2's
    # start — and once after it.
    spawns = _spawns_after(events, given_up[0]["id"])
    assert again.revive_asked_at is not None
    assert spawns and all(e["ts"] >= again.revive_asked_at - 0.5 for e in spawns), (
        spawns, again.revive_asked_at)
    assert len(spawns) == 1, spawns
    # The manager's turn in run 2 began with the notice and called both tools, in one turn.
    ended = [e for e in events if e["kind"] == "turn.ended" and e["agent"] == MANAGER
             and e["payload"].get("tool_calls", {}).get("mcp__hive__revive")]
    assert len(ended) == 1 and ended[0]["payload"]["tool_calls"] == {
        "mcp__hive__agent_status": 1, "mcp__hive__revive": 1}, ended
    assert ended[0]["payload"]["outcome"] == "ok", ended
    assert ended[0]["id"] > events_before[-1]["id"]
    _started_by_notice(events, ended[0], give_up.message_id)
    assert daemon.terminate() == 0, daemon.exits
    _report(capsys, f"revive across {how}: {len(killer.kills)} kills, exits {daemon.exits}, "
                    f"{len(model.turns(MANAGER))} manager turns, "
                    f"{time.monotonic() - began:.1f} s")


@pytest.mark.parametrize("hive", ["approval"], indirect=True)
def test_a_revive_needing_approval_waits_for_the_operator(
    hive: tuple[ReactingModel, DaemonProcess, KeeperKiller], capsys: pytest.CaptureFixture[str],
) -> None:
    model, daemon, killer = hive
    began = time.monotonic()
    daemon.register({MANAGER: Role.MANAGER, AGENT: Role.AGENT})
    with killer:
        daemon.start()
        daemon.wait_ready()
        give_up = _given_up_through_notices(daemon, model, killer)
        wait_until(lambda: "mcp__hive__revive" in model.reactions.get(1, Reaction(0, "", {})
                                                                      ).results,
                   60, "the manager's revive", describe=daemon.describe)
        reaction = model.reactions[1]
        _check_status(reaction.results["mcp__hive__agent_status"],
                      give_up.fields["generation"] or "")
        result = reaction.results["mcp__hive__revive"]
        found = re.match(rf"approval (\d+) requested \(revive of {AGENT}\): waiting for the "
                         r"operator\n", result)
        assert found is not None, result
        approval_id = int(found.group(1))
        # The operator's queue shows it, with why the manager asks.
        pending = [a for a in daemon.approvals() if a["id"] == approval_id]
        assert len(pending) == 1, daemon.approvals()
        assert (pending[0]["kind"], pending[0]["agent"], pending[0]["status"]) == (
            "revive", AGENT, "pending"), pending
        assert pending[0]["requested_by"] == MANAGER, pending
        reason = pending[0]["reason"] or ""
        assert f"{MANAGER} asks to revive {AGENT} (given_up)" in reason, reason
        assert "last crash: signal SIGKILL (9)" in reason, reason
        # Until the operator decides, eve stays down: the manager's turn is over, and nothing
        # starts eve.
        daemon.wait_settled([MANAGER], timeout=60)
        assert _state(daemon, AGENT) == "given_up", daemon.describe()
        given_up = [e for e in daemon.events()
                    if e["kind"] == "agent.given_up" and e["agent"] == AGENT]
        assert len(given_up) == 1, given_up
        assert _spawns_after(daemon.events(), given_up[0]["id"]) == []
        approved_at = time.time()
        approved = daemon.approve(approval_id)
        assert approved.ok, approved
        _runs_again(daemon, model, "m-eve-1")
    assert killer.error is None, killer.error
    events = daemon.events()
    spawns = _spawns_after(events, given_up[0]["id"])
    assert len(spawns) == 1 and spawns[0]["ts"] >= approved_at - 0.5, (spawns, approved_at)
    ended = [e for e in events if e["kind"] == "turn.ended" and e["agent"] == MANAGER
             and e["payload"].get("tool_calls", {}).get("mcp__hive__revive")]
    assert len(ended) == 1 and ended[0]["payload"]["tool_calls"] == {
        "mcp__hive__agent_status": 1, "mcp__hive__revive": 1}, ended
    _started_by_notice(events, ended[0], give_up.message_id)
    recent = daemon.get("/api/approvals?recent=1")
    assert recent.ok, recent
    done = [a for a in recent.body["approvals"] if a["id"] == approval_id]
    assert done and done[0]["status"] == "approved", done
    # The manager is told the operator's decision.
    wait_until(lambda: model.received(
        MANAGER, f"approval {approval_id} (revive {AGENT}) was approved"), 60,
        "the decision's notice in a turn of the manager", describe=daemon.describe)
    assert daemon.terminate() == 0, daemon.exits
    _report(capsys, f"revive through the approval queue: approval {approval_id}, "
                    f"{len(killer.kills)} kills, {time.monotonic() - began:.1f} s")
