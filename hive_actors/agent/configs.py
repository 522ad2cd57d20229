"""The config desk: agents' config repositories as the hive's services use them.

- the AgentActor reads an agent's *applied* ``agent.toml`` as :class:`AgentSettings`;
- the MCP tools stage drafts (``request_spawn_draft``) and submit refs for review
  (``request_spawn_commit``, ``apply_commit``): a ref whose ``agent.toml`` does not validate is
  refused here, with the file, the key and the reason, before it reaches the operator;
- an approved decision is carried out on disk before the agent (re)starts (``prepare``).

**Under** ``[hive] backend = "nixos"`` (the desk reads ``[hive] backend``; other backends keep
repositories of ``agent.toml`` alone) every path that creates or changes a repository writes the
container's Nix files (:mod:`hive_actors.containers.nixrender`), so ``nixos-container create
--flake <agent>/config/applied#<name>`` always finds its flake:

- one-shot spawn and a draft: the initial commit holds ``agent.toml``, ``hive.nix``,
  ``agent.nix`` and ``flake.nix`` (the one-shot spawn's review diff shows them all);
- a ref submitted for review (``request_spawn_commit``, ``apply_commit``): when its ``hive.nix``
  is not the rendering of its ``agent.toml`` (or it lacks ``agent.nix``/``flake.nix``), the desk
  commits the rendering on top of it (``refs/hive/rendered/<commit>``; deterministic: the same
  ref gives the same commit) and that commit is what the operator reviews and approves, so the
  Bash allow-list and MCP servers the manager changed reach the container. The manager's branch
  is left alone; its next commit is rendered again the same way;
- every start (``settings``) and approved decision (``prepare``): an applied commit whose
  ``hive.nix`` is stale (e.g. a repository from before, or the agent's role changed) is
  re-rendered the same way and applied: ``hive.nix`` is derived from what the operator approved.

``hive.nix`` is the hive's (a manager's edit is overwritten); ``agent.nix`` and ``flake.nix`` are
the manager's to edit (restored only when missing). The desk records each agent's role in
``<agent>/role`` for the backend (the manager's container sees the other agents' repositories),
and names paths to the manager as its container sees them (:meth:`ConfigDesk.draft_paths`).
The MCP servers' commands are not checked on the host (they run inside the container).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from hive_actors.agent.runtime import AgentSettings
from hive_actors.agentconfig.repo import ConfigRepo
from hive_actors.agentconfig.schema import parse_agent_toml, resolve_command
from hive_actors.agentconfig.tools import allowed_tools, extra_servers
from hive_actors.containers.nixconf import DEFAULT_AGENT_NIX, render_flake_nix
from hive_actors.containers.nixrender import (
    AGENT_NIX,
    FLAKE_NIX,
    HIVE_NIX,
    render_hive_nix,
    repo_files,
    view_path,
    write_role,
)
from hive_actors.errors import ConfigError, Conflict, NotFound, Refused
from hive_actors.hive import Hive
from hive_actors.paths import AgentPaths
from hive_actors.store import AgentState, Approval, ApprovalKind, Role
from hive_actors.store.names import validate_name

__all__ = ["ConfigDesk", "ManagerInit", "default_agent_toml"]

log = logging.getLogger(__name__)

HIVE_AUTHOR = "hive <hive@localhost>"


def default_agent_toml(name: str, model: str, system_prompt: str | None = None) -> str:
    """The configuration a new agent starts from (the manager may edit it in a draft);
    ``system_prompt`` is appended to the hive's own system prompt (``hive init``)."""
    # A JSON string is a TOML basic string (the same escapes).
    prompt = "" if system_prompt is None else (
        f"system_prompt = {json.dumps(system_prompt, ensure_ascii=False)}\n"
    )
    return (
        f"# {name}'s hive configuration. Edit, commit, and ask for it to be applied.\n"
        f"model = {json.dumps(model, ensure_ascii=False)}\n"
        f"{prompt}"
        "\n"
        "[bash]\n"
        "# Shell commands the agent may run without asking, as claude allow-list patterns.\n"
        "allow = []\n"
        "\n"
        "[limits]\n"
        "max_turns = 40\n"
    )


@dataclass(frozen=True)
class ManagerInit:
    """What :meth:`ConfigDesk.init_manager` did."""

    name: str
    """The hive's manager (the one found, or the one created)."""
    created: bool
    """False: the hive had its manager already and nothing changed."""
    model: str
    """The model of its applied config."""
    system_prompt: str | None
    """Its applied ``system_prompt``."""


class ConfigDesk:
    """Reads, stages, reviews and applies agents' configurations (thread-safe)."""

    def __init__(self, hive: Hive) -> None:
        self.hive = hive
        self.default_model = hive.config.model.default
        self.default_deadline = hive.config.supervision.turn_deadline
        self.nixos = hive.config.backend == "nixos"
        """The agents run in NixOS containers: their repositories carry the Nix files."""

    def repo(self, name: str) -> ConfigRepo:
        return self._repo(self.hive.agent_paths(name))

    def _repo(self, paths: AgentPaths) -> ConfigRepo:
        # In a NixOS container the MCP servers' commands are found inside, not on the host.
        return ConfigRepo(paths, resolve=None if self.nixos else resolve_command)

    def ensure_repo(self, name: str, *, model: str | None = None,
                    system_prompt: str | None = None) -> ConfigRepo:
        """The agent's repository, created with the default config if it has none (or
        finished, if a kill left its creation half-done: :meth:`ConfigRepo.init` is
        crash-safe and idempotent). nixos: with the Nix files, and the applied commit's
        ``hive.nix`` brought up to date (see the module docstring). ``model`` and
        ``system_prompt`` go into a repository created now (a present one is left alone)."""
        paths = self.hive.agent_paths(name).create()
        repo = self._repo(paths)
        role = self._role(name) if self.nixos else Role.AGENT
        if not repo.applied_exists():
            default = default_agent_toml(name, model or self.default_model, system_prompt)
            files = self._initial_files(name, role, default) if self.nixos else None
            repo.init(default, HIVE_AUTHOR, files=files)
        if self.nixos:
            self._sync(repo, name, role)
        return repo

    def draft_paths(self, name: str) -> tuple[str, str]:
        """Where the manager edits draft ``name``'s config repository and writes its initial
        notes, as the manager sees them (nixos: in its container's view, ``/hive/agents``)."""
        validate_name(name)
        if self.nixos:
            return view_path(name, "proposed"), view_path(name, "state")
        paths = self.hive.agent_paths(name)
        return str(paths.config / "proposed"), str(paths.state)

    # -- the Nix files (nixos) ---------------------------------------------------------------

    def _role(self, name: str) -> Role:
        with self.hive.open_store() as store:
            try:
                return store.registry.get(name).role
            except NotFound:
                return Role.AGENT  # a one-shot spawn's agent is registered after its approval

    def _initial_files(self, name: str, role: Role, default: str) -> dict[str, str]:
        config = parse_agent_toml(default, source="agent.toml (default)", resolve=None)
        return repo_files(name, str(role), config)

    def _render(self, repo: ConfigRepo, name: str, role: Role, sha: str) -> str:
        """``sha``, or a commit on top of it with ``hive.nix`` rendered from its ``agent.toml``
        (and the default ``agent.nix``/``flake.nix`` where it has none)."""
        wanted = {HIVE_NIX: render_hive_nix(name, str(role), repo.load(sha))}
        defaults = {AGENT_NIX: DEFAULT_AGENT_NIX, FLAKE_NIX: render_flake_nix(name)}
        for rel, text in defaults.items():
            if repo.read_file(sha, rel) is None:
                wanted[rel] = text
        changed = {rel: text for rel, text in wanted.items() if repo.read_file(sha, rel) != text}
        if not changed:
            return sha
        return repo.commit_files(
            sha,
            changed,
            HIVE_AUTHOR,
            message=f"hive: render {', '.join(sorted(changed))} from agent.toml\n\n"
            f"Hive-Rendered-From: {sha}",
        )

    def _sync(self, repo: ConfigRepo, name: str, role: Role) -> None:
        """The role file, and the applied commit's Nix files up to date."""
        write_role(repo.paths.root, str(role))
        head = repo.head("applied")
        rendered = self._render(repo, name, role, head)
        if rendered != head:
            repo.apply(rendered)
            log.info("agent %s: applied %s (hive.nix rendered on %s)", name, rendered[:7],
                     head[:7])

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

    def init_manager(self, name: str, *, model: str | None = None,
                     system_prompt: str | None = None) -> ManagerInit:
        """``hive init``: the hive's manager ``name`` registered (pending: the hive starts it)
        with its config repository (``model``, ``system_prompt``), unless the hive has a
        manager already — then nothing changes (Conflict when it is another than ``name``).

        Idempotent and crash-safe: the repository is made before the registration, so a
        manager the hive knows always has its config; run again, it finishes a half-done one.
        The caller holds the hive's lock (an open store: no hive runs on these files)."""
        validate_name(name)
        # One store open throughout: it holds the hive's lock, so no hive starts meanwhile.
        with self.hive.open_store() as store:
            existing = store.registry.manager()
            if existing is not None and existing.name != name:
                raise Conflict(
                    f"this hive's manager is {existing.name}; a hive has one manager: leave "
                    f"out --manager (or pass --manager {existing.name})"
                )
            created = existing is None
            if created:
                body = default_agent_toml(name, model or self.default_model, system_prompt)
                # Refused here, before anything is written: the file, the key, the reason.
                parse_agent_toml(body, source=f"{name}'s agent.toml", resolve=None)
            repo = self.ensure_repo(name, model=model, system_prompt=system_prompt)
            if created:
                store.registry.register(name, role=Role.MANAGER)
                if self.nixos:
                    self._sync(repo, name, Role.MANAGER)
                log.info("manager %s registered", name)
        config = repo.applied_config()
        return ManagerInit(name, created, config.model or self.default_model,
                           config.system_prompt)

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
        files = {"agent.toml": body}
        if self.nixos:
            files.update(self._initial_files(name, Role.AGENT, body))
        parts = [f"new agent {name}\n"]
        for rel, text in files.items():
            added = "".join(f"+{line}\n" for line in text.splitlines())
            parts.append(f"--- /dev/null\n+++ b/{rel}\n{added}")
        return "".join(parts)

    def review(self, name: str, ref: str) -> tuple[str, str]:
        """Validate ``ref`` of ``name``'s proposed repo; returns (commit, diff to review).

        An invalid config is refused here (Refused, with the file, key and reason), so the
        model reads what to fix and the operator never sees it.
        """
        repo = self.repo(name)
        try:
            sha = repo.resolve(ref)
            repo.load(sha)
            if self.nixos:
                sha = self._render(repo, name, self._role(name), sha)
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
            repo = self.ensure_repo(name)
            repo.apply(ref)
            if self.nixos:
                self._sync(repo, name, self._role(name))
