"""Model overrides on a real sqlite file and real state dirs: set, clear, persist, reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from hive_actors.errors import ConfigError, NotFound, Refused
from hive_actors.store import Store
from tests.support.store import WallClock, open_store, refused


@pytest.fixture
def store(state_store: Store) -> Store:
    """The store of these tests: ``state_store`` (agents' state dirs under ``state_root``)."""
    return state_store


def test_model_override_is_stored_and_cleared(store: Store) -> None:
    store.registry.register("alice")
    assert store.models.model("alice") is None
    agent = store.models.set_model("alice", "claude-opus-4-1")
    assert (agent.model, agent.model_persisted) == ("claude-opus-4-1", False)
    assert store.models.model("alice") == "claude-opus-4-1"
    assert store.events.events_since(0)[-1].payload == {
        "from": None,
        "to": "claude-opus-4-1",
        "persisted": False,
        "reason": "set",
    }
    assert store.models.set_model("alice", None).model is None
    refused(store, lambda: store.models.set_model("alice", "two words"), Refused, "no spaces")
    refused(store, lambda: store.models.set_model("zed", "opus"), NotFound, "'zed'")


def test_persisted_model_survives_a_restart(
    db_path: Path, clock: WallClock, state_root: Path
) -> None:
    dirs = lambda name: state_root / name  # noqa: E731
    with open_store(db_path, clock, state_dirs=dirs) as store:
        for name in ("alice", "bob", "carol"):
            store.registry.register(name)
        store.models.set_model("alice", "opus", persist=True)
        store.models.set_model("bob", "haiku")  # not persisted: gone after a restart
        store.models.set_model("carol", "sonnet", persist=True)
        store.models.set_model("carol", "haiku")  # replaced without persist: file removed
        assert (state_root / "alice" / "model").read_text() == "opus\n"
        assert not (state_root / "carol" / "model").exists()
    # Without the start-up recovery (another actor's connection) nothing is reset.
    with open_store(db_path, clock, state_dirs=dirs) as store:
        assert store.models.model("bob") == "haiku"
    with open_store(db_path, clock, state_dirs=dirs, recover=True) as store:
        assert store.registry.get("alice").model == "opus"
        assert store.registry.get("alice").model_persisted
        assert store.models.model("bob") is None
        assert store.models.model("carol") is None
    # The file is what the operator persisted: edited by hand, it wins at the next start.
    (state_root / "bob").mkdir(parents=True)
    (state_root / "bob" / "model").write_text("sonnet\n")
    (state_root / "alice" / "model").write_text("not a model name\n")
    with open_store(db_path, clock, state_dirs=dirs, recover=True) as store:
        assert store.models.model("bob") == "sonnet"
        assert store.models.model("alice") is None


def test_persisting_needs_a_writable_state_dir(
    db_path: Path, clock: WallClock, state_root: Path
) -> None:
    state_root.mkdir()
    (state_root / "alice").write_text("a file where the state dir should be")
    with open_store(db_path, clock, state_dirs=lambda n: state_root / n) as store:
        store.registry.register("alice")
        refused(
            store,
            lambda: store.models.set_model("alice", "opus", persist=True),
            Refused,
            "cannot persist the model of alice",
        )
    with open_store(db_path, clock) as store:
        refused(
            store,
            lambda: store.models.set_model("alice", "opus", persist=True),
            ConfigError,
            "no state dirs",
        )
