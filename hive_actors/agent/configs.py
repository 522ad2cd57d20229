"""The config desk: agents' config repositories as the hive's services use them.

- the AgentActor reads an agent's *applied* ``agent.toml`` as :class:`AgentSettings`;
- the MCP tools stage drafts (``request_spawn_draft``) and submit refs for review
  (``request_spawn_commit``, ``apply_commit``): a ref whose ``agent.toml`` does not validate is
  refused here, with the file, the key and the reason, before it reaches the operator;
- an approved decision is carried out on disk before the agent (re)starts (``prepare``).
"""

from __future__ import annotations

import logging

from hive_actors.agent.runtime import AgentSettings
from hive_actors.agentconfig.repo import ConfigRepo
from hive_actors.agentconfig.tools import allowed_tools, extra_servers
from hive_actors.errors import ConfigError, Refused
from hive_actors.hive import Hive
from hive_actors.paths import AgentPaths
from hive_actors.store import AgentState, Approval, ApprovalKind, Role
from hive_actors.store.names import validate_name

__all__ = ["ConfigDesk", "default_agent_toml"]

log = logging.getLogger(__name__)

HIVE_AUTHOR = "hive <hive@localhost>"


def default_agent_toml(name: str, model: str) -> str:
    """The configuration a new agent starts from (the manager may edit it in a draft)."""
    return (
        f"# {name}'s hive configuration. Edit, commit, and ask for it to be applied.\n"
        f'model = "{model}"\n'
        "\n"
        "[bash]\n"
        "# Shell commands the agent may run without asking, as claude allow-list patterns.\n"
        "allow = []\n"
        "\n"
        "[limits]\n"
        "max_turns = 40\n"
    )


class ConfigDesk:
    """Reads, stages, reviews and applies agents' configurations (thread-safe)."""

    def __init__(self, hive: Hive) -> None:
        self.hive = hive
        self.default_model = hive.config.model.default
        self.default_deadline = hive.config.supervision.turn_deadline

    def repo(self, name: str) -> ConfigRepo:
        return ConfigRepo(self.hive.agent_paths(name))

    def ensure_repo(self, name: str) -> ConfigRepo:
        """The agent's repository, created with the default config if it has none (or
        finished, if a kill left its creation half-done: :meth:`ConfigRepo.init` is
        crash-safe and idempotent)."""
        paths = self.hive.agent_paths(name).create()
        repo = ConfigRepo(paths)
        if not repo.applied_exists():
            repo.init(default_agent_toml(name, self.default_model), HIVE_AUTHOR)
        return repo

    def settings(self, name: str) -> AgentSettings:
        """The applied configuration as the turn harness needs it (raises ConfigError)."""
        config = self.ensure_repo(name).applied_config()
        return AgentSettings(
            model=config.model or self.default_model,
            allowed_tools=tuple(allowed_tools(config)),
            system_prompt=config.system_prompt,
            max_turns=config.limits.max_turns,
            turn_deadline=config.limits.turn_deadline or self.default_deadline,
            extra_servers=extra_servers(config),
            required_servers=frozenset({"hive", *(s.name for s in config.mcp if s.required)}),
        )

    # -- the manager's side --------------------------------------------------------------------

    def stage(self, name: str, *, by: str) -> AgentPaths:
        """Stage a draft: registered as ``draft``, its config repo and state dir created."""
        validate_name(name)
        with self.hive.open_store() as store:
            store.registry.register(name, role=Role.AGENT, state=AgentState.DRAFT)
        self.ensure_repo(name)
        self.hive.bell.ring()
        log.info("draft %s staged by %s", name, by)
        return self.hive.agent_paths(name)

    def spawn_diff(self, name: str) -> str:
        """What the operator reviews for a one-shot spawn: the new agent's default config."""
        validate_name(name)
        body = default_agent_toml(name, self.default_model)
        added = "".join(f"+{line}\n" for line in body.splitlines())
        return f"new agent {name}\n--- /dev/null\n+++ b/agent.toml\n{added}"

    def review(self, name: str, ref: str) -> tuple[str, str]:
        """Validate ``ref`` of ``name``'s proposed repo; returns (commit, diff to review).

        An invalid config is refused here (Refused, with the file, key and reason), so the
        model reads what to fix and the operator never sees it.
        """
        repo = self.repo(name)
        try:
            sha = repo.resolve(ref)
            repo.load(sha)
            return sha, repo.diff(sha)
        except ConfigError as exc:
            raise Refused(f"{name}: {exc}") from exc

    # -- the operator's decision ---------------------------------------------------------------

    def prepare(self, approval: Approval) -> None:
        """Carry an approved decision out on disk (before the agent starts on it).

        Idempotent: carried out again (the hive went down before the outcome was recorded)
        it ends in the same state — the repository created once, the commit applied once."""
        name = approval.agent
        if approval.kind is ApprovalKind.SPAWN:
            self.ensure_repo(name)
        else:
            ref = approval.ref
            if not ref:
                raise ConfigError(f"approval {approval.id} of {name} has no ref: it cannot be "
                                  "carried out; ask for it again with the commit to apply")
            self.ensure_repo(name).apply(ref)
