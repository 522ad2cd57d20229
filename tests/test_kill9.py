"""kill -9 durability: a hive under steady traffic, SIGKILLed at random points, loses nothing.

The hive runs in a child process (``python -m hive_actors.testing.busload``: the real tree on a
real sqlite file, serving JSON lines on a Unix socket). Worker threads in this process drive it
through the BusActor and ApprovalQueueActor asks — send, claim/ack a turn, request and decide
approvals, ask and answer questions — and record every request in a ledger as acknowledged,
refused, or failed (its connection dropped before the answer). The test kills the hive with
SIGKILL after a seeded random number of acknowledged operations (or a seeded random real time
after its start, which can land inside start-up recovery), waits until every worker has seen the
drop, reads the file directly and checks it against the ledger, then restarts the hive on the
same files. It proves, at every kill:

* every acknowledged message, approval decision and answer is in the file exactly once;
* every unacknowledged one is in the file at most once, and was reported failed to its sender —
  no request is ever left without an outcome;
* nothing is duplicated and nothing appears that nobody asked for;
* the restarted hive's start-up recovery released exactly what was in flight;
* an approval decided before a kill is refused when decided again after it.

A kill -9 leaves the page cache alone, so this proves the commit-before-acknowledge order, not
the fsync (``synchronous=FULL``) that a power cut needs.
"""

from __future__ import annotations

import abc
import enum
import json
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hive_actors.errors import Conflict, HiveError
from hive_actors.store import AgentState, Question, Role, Store
from hive_actors.store.questions import format_answer
from hive_actors.testing.busload import BusloadClient, HiveGone
from tests.support.timeout import TIMEOUT

SEED = int(os.environ.get("HIVE_KILL9_SEED", "9009"))
CYCLES = int(os.environ.get("HIVE_KILL9_CYCLES", "40"))
SENDERS = 4
"""Threads that only send messages; an approvals, a questions and a consumer thread join them."""
ACKS_PER_KILL = (1, 60)
"""A kill lands after this many acknowledged operations (uniform, seeded) …"""
TIME_KILL_EVERY = 4
"""… except about one cycle in this many, which kills after a random real time since the spawn."""
TIME_KILL_SECONDS = (0.0, 0.15)
"""The hive is ready ~0.1 s after its spawn here, so some of these land before that."""
TWICE_CYCLE = 1
"""This cycle decides an approval; after its kill the next one decides it again (both cycles
kill by acknowledged operations, so both hives surely become ready)."""
REPO = Path(__file__).resolve().parent.parent

MANAGER, SENDER, CONSUMED, OTHER, ASKER = "boss", "alice", "bob", "carol", "quinn"


# -- the ledger: every request and its outcome -------------------------------------------------


class Outcome(enum.Enum):
    PENDING = "pending"
    """Sent, no answer yet. None may be left once the hive is dead and every worker parked."""
    ACKED = "acked"
    REFUSED = "refused"
    """The hive answered with an error."""
    FAILED = "failed"
    """The connection dropped before the answer: the sender was told it is not acknowledged."""


@dataclass
class Op:
    """One request a worker made."""

    kind: str
    worker: str
    seq: int
    epoch: int
    """Which hive run (counted from 1) the worker was connected to."""
    fields: dict[str, Any]
    outcome: Outcome = Outcome.PENDING
    result: Any = None
    error: str | None = None


class World:
    """What the workers and the controller share, under ONE condition variable.

    ``epoch`` counts hives that became ready; ``up`` says the current one is running.
    A worker that lost its connection *parks* (``parked[name]`` = the epoch it saw) and waits
    for a later epoch; once ``up`` is False no worker can unpark, so "all parked" means every
    request made to the dead hive has its outcome.
    """

    def __init__(self, workers: list[str]) -> None:
        self.cond = threading.Condition()
        self.ops: list[Op] = []
        self.acked = 0
        self.epoch = 0
        self.up = False
        self.stopping = False
        self.parked: dict[str, int | None] = {name: 0 for name in workers}
        self.errors: list[BaseException] = []

    def call(self, client: BusloadClient, op: Op) -> Any:
        """Make ``op``'s request and record its outcome; HiveGone propagates (after recording)."""
        with self.cond:
            self.ops.append(op)
        try:
            result = client.call(op.kind, **op.fields)
        except HiveGone:
            self._settle(op, Outcome.FAILED)
            raise
        except HiveError as exc:
            self._settle(op, Outcome.REFUSED, error=f"{type(exc).__name__}: {exc}")
            return exc
        self._settle(op, Outcome.ACKED, result=result)
        return result

    def _settle(
        self, op: Op, outcome: Outcome, *, result: Any = None, error: str | None = None
    ) -> None:
        with self.cond:
            op.outcome, op.result, op.error = outcome, result, error
            if outcome is Outcome.ACKED:
                self.acked += 1
            self.cond.notify_all()

    def park(self, name: str, seen: int) -> int | None:
        """Wait for a hive run after ``seen``; its epoch, or None when the test stops."""
        with self.cond:
            self.parked[name] = seen
            self.cond.notify_all()
            ok = self.cond.wait_for(
                lambda: self.stopping or (self.up and self.epoch > seen), TIMEOUT * 6
            )
            if not ok:
                raise AssertionError(f"{name}: no hive came up within {TIMEOUT * 6:g} s")
            if self.stopping:
                return None
            self.parked[name] = None
            return self.epoch

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            self.errors.append(exc)
            self.stopping = True
            self.cond.notify_all()

    def check_errors(self) -> None:
        with self.cond:
            if self.errors:
                raise AssertionError(f"a worker failed: {self.errors[0]!r}") from self.errors[0]

    def announce(self) -> int:
        with self.cond:
            self.epoch += 1
            self.up = True
            self.cond.notify_all()
            return self.epoch

    def down(self) -> None:
        with self.cond:
            self.up = False
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait (on the condition) for ``predicate``, failing fast if a worker failed."""
        with self.cond:
            ok = self.cond.wait_for(lambda: bool(self.errors) or predicate(), timeout)
        self.check_errors()
        if not ok:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")

    def wait_acked(self, count: int, timeout: float, what: str) -> None:
        """Wait until ``count`` operations were acknowledged in all."""
        self.wait(lambda: self.acked >= count, timeout, what)

    def snapshot(self) -> list[Op]:
        with self.cond:
            return [Op(o.kind, o.worker, o.seq, o.epoch, dict(o.fields), o.outcome, o.result,
                       o.error) for o in self.ops]


# -- the workers -------------------------------------------------------------------------------


class Worker(abc.ABC):
    """A thread that reconnects after every kill and makes requests until the test stops."""

    def __init__(self, name: str, world: World, socket_path: Path, seed: int) -> None:
        self.name = name
        self.world = world
        self.socket_path = socket_path
        self.rng = random.Random(seed)
        self.seq = 0
        self.thread = threading.Thread(target=self._run, name=f"kill9-{name}", daemon=True)

    def op(self, kind: str, epoch: int, /, **fields: Any) -> Op:
        """The worker's next request (``fields`` are the wire's, ``kind`` among them)."""
        self.seq += 1
        return Op(kind, self.name, self.seq, epoch, fields)

    @abc.abstractmethod
    def step(self, client: BusloadClient, epoch: int) -> None:
        """One unit of traffic; raise HiveGone when the hive is gone."""

    def _run(self) -> None:
        seen = 0
        try:
            while True:
                epoch = self.world.park(self.name, seen)
                if epoch is None:
                    return
                seen = epoch
                try:
                    with BusloadClient(self.socket_path, TIMEOUT) as client:
                        while not self.world.stopping:
                            self.step(client, epoch)
                except HiveGone:
                    continue
        except BaseException as exc:
            self.world.fail(exc)


class Sender(Worker):
    """Sends messages from alice to bob (consumed) or carol (left queued)."""

    def step(self, client: BusloadClient, epoch: int) -> None:
        recipient = CONSUMED if self.rng.random() < 0.5 else OTHER
        op = self.op("send", epoch, sender=SENDER, recipient=recipient, body="")
        op.fields["body"] = f"{self.name}:{op.seq}"
        self.world.call(client, op)


class Approver(Worker):
    """Requests spawn approvals and decides each; a decision whose answer was lost is retried
    after the restart (it is then either applied now or refused as already decided)."""

    undecided: tuple[int, bool] | None = None

    def step(self, client: BusloadClient, epoch: int) -> None:
        if self.undecided is not None:
            approval_id, approve = self.undecided
            op = self.op("decide", epoch, approval_id=approval_id, approve=approve, by="operator")
            self.world.call(client, op)  # acked or refused: either way it is settled
            self.undecided = None
            return
        op = self.op("request_approval", epoch, kind="spawn", agent="",
                     requested_by=MANAGER, diff="+ agent")
        op.fields["agent"] = f"ap{op.seq}"
        result = self.world.call(client, op)
        if op.outcome is Outcome.ACKED:
            self.undecided = (int(result["id"]), self.rng.random() < 0.5)


class Questioner(Worker):
    """Quinn asks the operator; the operator answers (an answer lost to a kill is retried)."""

    unanswered: int | None = None

    def step(self, client: BusloadClient, epoch: int) -> None:
        if self.unanswered is not None:
            op = self.op("answer", epoch, question_id=self.unanswered,
                         text=f"answer to {self.unanswered}", by="operator")
            self.world.call(client, op)
            self.unanswered = None
            return
        op = self.op("ask", epoch, agent=ASKER, question="")
        op.fields["question"] = f"{self.name} question {op.seq}?"
        result = self.world.call(client, op)
        if op.outcome is Outcome.ACKED:
            self.unanswered = int(result)


class Consumer(Worker):
    """Bob's turns: claim a batch, hold it while other traffic goes on, then ack it.

    Holding the turn open makes a kill likely to find messages in flight, which the next
    hive's start-up recovery must release.
    """

    def __init__(self, name: str, world: World, socket_path: Path, seed: int,
                 generation: int) -> None:
        super().__init__(name, world, socket_path, seed)
        self.generation = generation

    def step(self, client: BusloadClient, epoch: int) -> None:
        world = self.world
        turn = f"t{epoch}-{self.seq + 1}"
        op = self.op("claim", epoch, agent=CONSUMED, generation=self.generation, turn_id=turn,
                     limit=25)
        claimed = world.call(client, op)
        with world.cond:
            start = world.acked
        hold = self.rng.randint(1, 8)
        # A turn that claimed nothing waits for new traffic; a turn that did "works" until
        # `hold` more operations were acknowledged. Either way a kill wakes it (up is False),
        # and its next request then reports the drop.
        world.wait(lambda: world.stopping or not world.up or world.acked >= start + hold,
                   TIMEOUT, f"{self.name}: traffic while holding turn {turn}")
        if op.outcome is Outcome.ACKED and claimed:
            self.world.call(client, self.op("ack", epoch, turn_id=turn))


# -- the hive process --------------------------------------------------------------------------


class HiveProcess:
    """One run of the busload hive: spawn, wait for its readiness line, SIGKILL."""

    def __init__(self, state_dir: Path, socket_path: Path, log: Path) -> None:
        self.log = log
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hive_actors.testing.busload", "--state-dir",
                 str(state_dir), "--socket", str(socket_path), "--timeout", str(TIMEOUT)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, cwd=REPO, env=env,
            )
        self.started = time.monotonic()
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, name="kill9-stdout", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def ready(self, timeout: float) -> dict[str, Any] | None:
        """The readiness line, or None if it did not come within ``timeout``."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if line is None:
            raise AssertionError(
                f"the hive exited ({self.proc.wait(TIMEOUT)}) before it was ready:\n"
                f"{self.log.read_text(errors='replace')[-3000:]}")
        ready: dict[str, Any] = json.loads(line)
        assert ready.get("ready") is True and ready.get("pid") == self.proc.pid, ready
        return ready

    def kill(self) -> None:
        """SIGKILL and reap it (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        self.reader.join(TIMEOUT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        assert not self.reader.is_alive()


# -- reading the file and checking it against the ledger (pure) --------------------------------


@dataclass(frozen=True)
class FileView:
    """The rows the checks need, read from the file while no hive runs."""

    integrity: str
    messages: list[tuple[Any, ...]]
    """id, sender, recipient, kind, body, status, turn_id, claims."""
    approvals: list[tuple[Any, ...]]
    """id, agent, status."""
    questions: list[tuple[Any, ...]]
    """id, question, answer, message_id."""
    agents: dict[str, str]


def read_file(db_path: Path) -> FileView:
    with Store.open(db_path) as store:
        db = store.db
        return FileView(
            integrity=str(db.value("PRAGMA integrity_check")),
            messages=db.rows(
                "SELECT id, sender, recipient, kind, body, status, turn_id, claims FROM messages "
                "ORDER BY id"),
            approvals=db.rows("SELECT id, agent, status FROM approvals ORDER BY id"),
            questions=db.rows(
                "SELECT id, question, answer, message_id FROM questions ORDER BY id"),
            agents={str(n): str(s) for n, s in db.rows("SELECT name, state FROM agents")},
        )


@dataclass
class Problems:
    found: list[str] = field(default_factory=list)

    def __call__(self, ok: bool, text: str) -> None:
        if not ok:
            self.found.append(text)


def check(ops: list[Op], view: FileView, epoch: int) -> list[str]:
    """Everything the file must say after a kill, given the ledger; the problems found."""
    bad = Problems()
    bad(view.integrity == "ok", f"integrity_check: {view.integrity}")
    for op in ops:
        bad(op.outcome is not Outcome.PENDING, f"{op} has no outcome: silently gone")
    _check_sends(ops, view, bad)
    _check_turns(ops, view, bad, epoch)
    _check_approvals(ops, view, bad)
    _check_questions(ops, view, bad)
    kinds = Counter(m[3] for m in view.messages)
    bad(set(kinds) <= {"peer", "system", "operator"}, f"messages of unexpected kinds: {kinds}")
    return bad.found


def _check_sends(ops: list[Op], view: FileView, bad: Problems) -> None:
    rows: dict[str, list[int]] = defaultdict(list)
    for mid, _sender, _recipient, kind, body, *_ in view.messages:
        if kind == "peer":
            rows[body].append(mid)
    sends = {op.fields["body"]: op for op in ops if op.kind == "send"}
    for body, ids in rows.items():
        bad(body in sends, f"message {ids} ({body!r}) was never sent")
        bad(len(ids) == 1, f"message {body!r} is stored {len(ids)} times: {ids}")
    by_worker: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for body, op in sends.items():
        if op.outcome is Outcome.ACKED:
            bad(rows.get(body) == [op.result],
                f"acknowledged send {body!r} (id {op.result}) is stored as {rows.get(body)}")
            by_worker[(op.worker, op.fields["recipient"])].append((op.seq, int(op.result)))
        elif op.outcome is Outcome.REFUSED:
            bad(False, f"send {body!r} was refused: {op.error}")
    for key, pairs in by_worker.items():
        ids = [mid for _, mid in sorted(pairs)]
        bad(ids == sorted(ids), f"{key}: acknowledged sends out of order: {ids}")


def _check_turns(ops: list[Op], view: FileView, bad: Problems, epoch: int) -> None:
    stored = {m[0]: (m[5], m[6], m[7]) for m in view.messages}

    def status(mid: int) -> tuple[str, str | None, int]:
        return stored.get(mid, ("missing", None, 0))

    claims = {op.fields["turn_id"]: op for op in ops if op.kind == "claim"}
    acks = {op.fields["turn_id"]: op for op in ops if op.kind == "ack"}
    times_claimed: Counter[int] = Counter()
    for turn, op in claims.items():
        bad(op.outcome is not Outcome.REFUSED, f"claim {turn} refused: {op.error}")
        if op.outcome is Outcome.ACKED:
            times_claimed.update(op.result)
    for mid, count in times_claimed.items():
        bad(status(mid)[2] >= count, f"message {mid} handed to {count} turns, claims says "
            f"{status(mid)[2]}")
    for turn, ack in acks.items():
        if ack.outcome is not Outcome.ACKED:
            bad(ack.outcome is Outcome.FAILED, f"ack {turn} refused: {ack.error}")
            continue
        claimed = claims[turn].result
        bad(ack.result == len(claimed), f"ack {turn} delivered {ack.result} of {claimed}")
        for mid in claimed:
            bad(status(mid)[0] == "delivered", f"message {mid} of acked turn {turn} is "
                f"{status(mid)[0]}")
    for mid, (state, turn, _) in stored.items():
        if state == "in_flight":
            bad(turn in claims and turn.startswith(f"t{epoch}-"),
                f"message {mid} in flight for turn {turn}, which is not of hive run {epoch}: "
                "start-up recovery did not release it")
        if state == "delivered":
            bad(turn in acks, f"message {mid} delivered by turn {turn}, which nobody acked")


def _check_approvals(ops: list[Op], view: FileView, bad: Problems) -> None:
    rows: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for aid, agent, state in view.approvals:
        rows[agent].append((aid, state))
    requests = {op.fields["agent"]: op for op in ops if op.kind == "request_approval"}
    decisions: dict[int, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind == "decide":
            decisions[int(op.fields["approval_id"])].append(op)
    notices = Counter(
        m[4].split(" (", 1)[0] for m in view.messages if m[3] == "system" and m[2] == MANAGER)
    for agent, found in rows.items():
        bad(agent in requests, f"approval {found} for {agent} was never requested")
        bad(len(found) == 1, f"approval for {agent} stored {len(found)} times: {found}")
    for agent, op in requests.items():
        found = rows.get(agent, [])
        if op.outcome is Outcome.ACKED:
            bad([aid for aid, _ in found] == [op.result["id"]],
                f"acknowledged approval {op.result} for {agent} is stored as {found}")
        elif op.outcome is Outcome.REFUSED:
            bad(False, f"approval request for {agent} refused: {op.error}")
        for aid, state in found:
            _check_decision(aid, agent, state, decisions.get(aid, []), view, bad)
            bad(notices[f"approval {aid}"] == (0 if state == "pending" else 1),
                f"approval {aid} ({state}) has {notices[f'approval {aid}']} notices for "
                f"{MANAGER}")


def _check_decision(aid: int, agent: str, state: str, decides: list[Op], view: FileView,
                    bad: Problems) -> None:
    wanted = {"approved" if op.fields["approve"] else "denied" for op in decides}
    acked = [op for op in decides if op.outcome is Outcome.ACKED]
    refused = [op for op in decides if op.outcome is Outcome.REFUSED]
    bad(len(acked) <= 1, f"approval {aid} was decided {len(acked)} times: {acked}")
    for op in acked:
        bad(op.result["status"] == state, f"approval {aid}: acknowledged {op.result}, stored "
            f"{state}")
    for op in refused:
        bad(state != "pending" and "already" in str(op.error),
            f"approval {aid}: decision refused ({op.error}) but it is {state}")
    if not decides:
        bad(state == "pending", f"approval {aid} is {state}, but nobody decided it")
    else:
        bad(state == "pending" or state in wanted,
            f"approval {aid} is {state}; the decisions asked were {wanted}")
    spawned = view.agents.get(agent)
    bad((spawned == "pending") == (state == "approved"),
        f"approval {aid} is {state} and agent {agent} is {spawned}")


def _check_questions(ops: list[Op], view: FileView, bad: Problems) -> None:
    rows: dict[str, list[tuple[int, str | None, int | None]]] = defaultdict(list)
    for qid, text, answer, message_id in view.questions:
        rows[text].append((qid, answer, message_id))
    asks = {op.fields["question"]: op for op in ops if op.kind == "ask"}
    answers: dict[int, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind == "answer":
            answers[int(op.fields["question_id"])].append(op)
    messages = {m[0]: m for m in view.messages}
    carried = Counter(
        m[4].split(" (", 1)[0] for m in view.messages if m[3] == "operator")
    for text, found in rows.items():
        bad(text in asks, f"question {found} ({text!r}) was never asked")
        bad(len(found) == 1, f"question {text!r} stored {len(found)} times: {found}")
    for text, op in asks.items():
        found = rows.get(text, [])
        if op.outcome is Outcome.ACKED:
            bad([qid for qid, _, _ in found] == [op.result],
                f"acknowledged question {op.result} ({text!r}) is stored as {found}")
        for qid, answer, message_id in found:
            tries = answers.get(qid, [])
            acked = [a for a in tries if a.outcome is Outcome.ACKED]
            expected = {a.fields["text"] for a in tries}
            bad(answer is None or answer in expected, f"question {qid} answered {answer!r}, "
                f"asked {expected}")
            bad(not acked or (answer is not None and acked[0].result["message_id"] == message_id),
                f"question {qid}: acknowledged answer {acked} stored as {answer!r}/{message_id}")
            for a in tries:
                if a.outcome is Outcome.REFUSED:
                    bad(answer is not None and "already answered" in str(a.error),
                        f"answer to {qid} refused ({a.error}) but it is unanswered")
            key = f"Answer to your question {qid}"
            bad(carried[key] == (0 if answer is None else 1),
                f"question {qid} has {carried[key]} answer messages")
            if answer is not None:
                assert message_id is not None
                row = messages.get(message_id)
                bad(row is not None and row[4] == format_answer(_question(qid, text), answer)
                    and row[2] == ASKER, f"answer message {message_id} of {qid} is {row}")


def _question(qid: int, text: str) -> Question:
    return Question(qid, ASKER, text, 0.0, None, None, None, None)


# -- the test ----------------------------------------------------------------------------------


def _register(db_path: Path) -> int:
    """The hive's agents, through the store API; returns bob's generation."""
    with Store.open(db_path) as store:
        for name, role in ((MANAGER, Role.MANAGER), (SENDER, Role.AGENT), (CONSUMED, Role.AGENT),
                           (OTHER, Role.AGENT), (ASKER, Role.AGENT)):
            store.registry.register(name, role=role)
            store.registry.spawn(name)
            store.registry.set_state(name, AgentState.IDLE)
        return store.registry.get(CONSUMED).generation


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # pytest's tmp_path can push a Unix socket path past its 108-byte limit; this one is short.
    with tempfile.TemporaryDirectory(prefix="k9-") as path:
        yield Path(path)


def test_kill9_loses_nothing_acknowledged(
    tmp_path: Path, socket_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    db_path = tmp_path / "hive.db"
    socket_path = socket_dir / "hive.sock"
    log = tmp_path / "hive-stderr.log"
    generation = _register(db_path)

    names = [f"s{i}" for i in range(SENDERS)] + ["approver", "questioner", "consumer"]
    world = World(names)
    workers: list[Worker] = [Sender(n, world, socket_path, SEED + i)
                             for i, n in enumerate(names[:SENDERS])]
    workers += [Approver("approver", world, socket_path, SEED + 100),
                Questioner("questioner", world, socket_path, SEED + 101),
                Consumer("consumer", world, socket_path, SEED + 102, generation)]
    for worker in workers:
        worker.thread.start()

    hive: HiveProcess | None = None
    in_flight = 0
    stats: Counter[str] = Counter()
    twice: Op | None = None
    try:
        for cycle in range(CYCLES):
            hive = HiveProcess(tmp_path, socket_path, log)
            by_time = cycle % TIME_KILL_EVERY == TIME_KILL_EVERY - 1 and cycle not in (
                TWICE_CYCLE, TWICE_CYCLE + 1)
            if by_time:
                # A real-time kill point: it may land before the hive is ready, inside
                # start-up recovery; the readiness wait is bounded by the same delay.
                deadline = hive.started + rng.uniform(*TIME_KILL_SECONDS)
                ready = hive.ready(max(0.0, deadline - time.monotonic()))
            else:
                ready = hive.ready(TIMEOUT * 3)
                assert ready is not None, f"the hive was not ready within {TIMEOUT * 3:g} s"
            if ready is not None:
                assert ready["released"] == in_flight, (
                    f"cycle {cycle}: start-up recovery released {ready['released']} message(s), "
                    f"{in_flight} were in flight at the kill")
                stats["released"] += ready["released"]
                epoch = world.announce()
                with world.cond:
                    base = world.acked
                if cycle == TWICE_CYCLE:
                    twice = _decide_before_kill(world, socket_path, epoch)
                elif cycle == TWICE_CYCLE + 1:
                    assert twice is not None
                    _decide_again_after_kill(world, socket_path, epoch, twice)
                    stats["decided again after a kill"] += 1
                if by_time:
                    with world.cond:
                        world.cond.wait_for(lambda: bool(world.errors),
                                            max(0.0, deadline - time.monotonic()))
                    world.check_errors()
                else:
                    target = base + rng.randint(*ACKS_PER_KILL)
                    world.wait_acked(target, TIMEOUT * 3,
                                     f"cycle {cycle}: {target - base} acknowledged operations")
            stats["kills before ready" if ready is None else "kills after ready"] += 1
            world.down()
            hive.kill()
            world.wait(lambda: all(p is not None for p in world.parked.values()), TIMEOUT * 3,
                       f"cycle {cycle}: every worker to see the kill")
            ops = world.snapshot()
            view = read_file(db_path)
            problems = check(ops, view, world.epoch)
            assert not problems, f"cycle {cycle} (seed {SEED}):\n" + "\n".join(problems[:20])
            in_flight = sum(1 for m in view.messages if m[5] == "in_flight")
            stats["in flight at a kill"] += in_flight
    finally:
        with world.cond:
            world.stopping = True
            world.cond.notify_all()
        if hive is not None:
            hive.kill()
        for worker in workers:
            worker.thread.join(TIMEOUT)
        assert not [w.name for w in workers if w.thread.is_alive()], "workers left running"
    world.check_errors()
    # The hives' own logs: a service that crashed and was restarted under the load would
    # answer correctly and still be a bug.
    hive_log = log.read_text(errors="replace")
    assert "Traceback" not in hive_log and "ERROR" not in hive_log, hive_log[-3000:]

    outcomes = Counter((op.kind, op.outcome.value) for op in ops)
    failed = sum(n for (_, outcome), n in outcomes.items() if outcome == "failed")
    # The run must have hit what it claims to test: requests cut off by a kill, turns in
    # flight released by recovery, and every kind of request acknowledged. (Kills before
    # readiness depend on the machine's speed: they are counted, not required.)
    assert failed > 0, f"no request was ever cut off by a kill: {outcomes}"
    assert stats["released"] > 0, f"no kill ever found a turn in flight: {stats}"
    assert outcomes[("send", "acked")] > 0 and outcomes[("decide", "acked")] > 0
    assert outcomes[("answer", "acked")] > 0 and outcomes[("ack", "acked")] > 0
    assert stats["decided again after a kill"] == 1, stats
    with capsys.disabled():
        print(f"\nkill -9: {CYCLES} cycles (seed {SEED}) in {time.monotonic() - began:.1f} s; "
              + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
        for (kind, outcome), n in sorted(outcomes.items()):
            print(f"  {kind:17} {outcome:8} {n}")


def _decide_before_kill(world: World, socket_path: Path, epoch: int) -> Op:
    """Request and approve an approval; the kill comes after the decision is acknowledged."""
    with BusloadClient(socket_path, TIMEOUT) as client:
        request = Op("request_approval", "ctl", 1, epoch, {
            "kind": "spawn", "agent": "twice", "requested_by": MANAGER, "diff": "+ twice"})
        approval = world.call(client, request)
        assert request.outcome is Outcome.ACKED, request
        decide = Op("decide", "ctl", 2, epoch,
                    {"approval_id": approval["id"], "approve": True, "by": "operator"})
        decided = world.call(client, decide)
        assert decided == {"id": approval["id"], "status": "approved"}, decided
        return decide


def _decide_again_after_kill(world: World, socket_path: Path, epoch: int, first: Op) -> None:
    """The same approval decided again by a new hive: refused, nothing changes."""
    with BusloadClient(socket_path, TIMEOUT) as client:
        again = Op("decide", "ctl", 3, epoch,
                   {"approval_id": first.fields["approval_id"], "approve": False, "by": "operator"})
        refused = world.call(client, again)
    assert isinstance(refused, Conflict), refused
    assert "already approved by operator" in str(refused), refused


# -- the checks themselves can fail ------------------------------------------------------------


def _op(kind: str, seq: int, outcome: Outcome, result: Any = None, /, **fields: Any) -> Op:
    return Op(kind, "w", seq, 1, fields, outcome, result)


def _ledger() -> list[Op]:
    return [
        _op("send", 1, Outcome.ACKED, 1, sender=SENDER, recipient=CONSUMED, body="w:1"),
        _op("send", 2, Outcome.FAILED, None, sender=SENDER, recipient=CONSUMED, body="w:2"),
        _op("claim", 3, Outcome.ACKED, [1], agent=CONSUMED, generation=1, turn_id="t1-3"),
        _op("request_approval", 4, Outcome.ACKED, {"id": 1, "status": "pending"},
            kind="spawn", agent="ap4", requested_by=MANAGER),
        _op("decide", 5, Outcome.ACKED, {"id": 1, "status": "denied"},
            approval_id=1, approve=False, by="operator"),
        _op("ask", 6, Outcome.ACKED, 1, agent=ASKER, question="q?"),
        _op("answer", 7, Outcome.ACKED, {"question": 1, "message_id": 3},
            question_id=1, text="yes", by="operator"),
    ]


def _file(**changes: Any) -> FileView:
    answer = format_answer(_question(1, "q?"), "yes")
    view = FileView(
        integrity="ok",
        messages=[
            (1, SENDER, CONSUMED, "peer", "w:1", "in_flight", "t1-3", 1),
            (2, "hive", MANAGER, "system", "approval 1 (spawn ap4) was denied by operator",
             "queued", None, 0),
            (3, "operator", ASKER, "operator", answer, "queued", None, 0),
        ],
        approvals=[(1, "ap4", "denied")],
        questions=[(1, "q?", "yes", 3)],
        agents={MANAGER: "idle", SENDER: "idle", CONSUMED: "idle", ASKER: "idle"},
    )
    return FileView(**{**view.__dict__, **changes})


def test_check_passes_a_file_that_matches_the_ledger() -> None:
    assert check(_ledger(), _file(), epoch=1) == []


@pytest.mark.parametrize(
    ("ledger", "changes", "problem"),
    [
        ("lost", {"messages": []}, "acknowledged send 'w:1'"),
        ("dup", {}, "stored 2 times"),
        ("nowhere", {}, "was never sent"),
        ("pending", {}, "silently gone"),
        ("unreleased", {}, "start-up recovery did not release it"),
        ("undecided", {"approvals": [(1, "ap4", "pending")]}, "acknowledged {'id': 1"),
        ("twice-noticed", {}, "has 2 notices"),
        ("unanswered", {"questions": [(1, "q?", None, None)]}, "acknowledged answer"),
        ("corrupt", {"integrity": "*** page 3 is never used"}, "integrity_check"),
    ],
)
def test_check_finds_what_a_kill_must_not_do(ledger: str, changes: dict[str, Any],
                                             problem: str) -> None:
    ops = _ledger()
    base = _file()
    messages = list(base.messages)
    epoch = 1
    if ledger == "dup":
        messages.append((4, SENDER, CONSUMED, "peer", "w:2", "queued", None, 0))
        messages.append((5, SENDER, CONSUMED, "peer", "w:2", "queued", None, 0))
    elif ledger == "nowhere":
        messages.append((4, SENDER, OTHER, "peer", "w:99", "queued", None, 0))
    elif ledger == "pending":
        ops.append(_op("send", 8, Outcome.PENDING, sender=SENDER, recipient=OTHER, body="w:8"))
    elif ledger == "unreleased":
        epoch = 2  # a later hive ran, and turn t1-3 is still in flight
    elif ledger == "twice-noticed":
        messages.append((4, "hive", MANAGER, "system", messages[1][4], "queued", None, 0))
    view = _file(**{"messages": messages, **changes})
    found = check(ops, view, epoch)
    assert any(problem in p for p in found), found
