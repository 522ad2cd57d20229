"""Agent pages: one small site per agent, on the agent's own port, as agents come and go.

Which agents have a page is decided by :func:`plan_pages` (pure): every agent that is not
destroyed (a draft's page shows its state and log; its terminal says the container is not
running). :class:`AgentPages` carries a plan out on the gateway actor's thread:

* the port comes from the port rule (:func:`hive_actors.httpd.agent_web_port`; "applied config
  exists" is the agent's ``config/applied`` checkout — except for a draft, whose repository is
  created with one: a two-step spawn's draft is a fresh spawn), skipping every port the hive
  has handed out (every agent's recorded port, a destroyed one's too — revived, it gets its
  port back — and the dashboard's), and is recorded in the registry
  (``store.registry.set_port``);
* the site is bound with SO_REUSEADDR and bounded retries; a bind that still fails is logged
  with the port and the fix, shown on the dashboard (``page_error``), and retried at the next
  change of the registry;
* a destroyed agent's site is removed (its port file stays: a revived agent gets its port back).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace

from hive_actors.agentconfig.repo import ConfigRepo
from hive_actors.errors import HiveError
from hive_actors.hive import Hive
from hive_actors.httpd.asgi import ASGIApp
from hive_actors.httpd.fanout import Fanout
from hive_actors.httpd.ports import PORT_FILE, agent_web_port, is_port_free
from hive_actors.httpd.server import SiteOptions, WebServer
from hive_actors.store import AgentState, Store

__all__ = ["AgentPages", "PagePlan", "plan_pages", "site_name"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PagePlan:
    """What to change: pages to add and pages to remove, by agent name."""

    add: tuple[str, ...]
    remove: tuple[str, ...]


def site_name(agent: str) -> str:
    """The web server's name for an agent's site."""
    return f"agent:{agent}"


def plan_pages(states: Mapping[str, AgentState], serving: Collection[str]) -> PagePlan:
    """Every agent that is not destroyed has a page; nobody else does."""
    wanted = {name for name, state in states.items() if state is not AgentState.DESTROYED}
    have = set(serving)
    return PagePlan(add=tuple(sorted(wanted - have)), remove=tuple(sorted(have - wanted)))


SiteFactory = Callable[[str], tuple[ASGIApp, Fanout]]
"""Builds an agent's site: its app and the fan-out its events are published to."""


class AgentPages:
    """The agents' sites on the gateway's web server (used from the gateway actor's thread,
    except :attr:`fanouts` and :attr:`errors`, which any thread may read)."""

    def __init__(
        self,
        web: WebServer,
        hive: Hive,
        store: Store,
        build_site: SiteFactory,
        *,
        host: str,
        dashboard_port: int,
        options: SiteOptions | None = None,
    ) -> None:
        self._web = web
        self._hive = hive
        self._store = store
        self._build_site = build_site
        self._host = host
        self._dashboard_port = dashboard_port
        self._options = options or SiteOptions()
        self.fanouts: Mapping[str, Fanout] = {}
        """Each served agent's fan-out (replaced whole, never mutated: safe to read anywhere)."""
        self.errors: Mapping[str, str] = {}
        """Why an agent's page is not served (replaced whole)."""

    def reconcile(self) -> None:
        """Bring the sites in line with the registry."""
        rows = self._store.registry.agents()
        plan = plan_pages({a.name: a.state for a in rows}, self.fanouts)
        for name in plan.remove:
            self._remove(name)
        for name in plan.add:
            self._add(name)

    def _add(self, name: str) -> None:
        config = self._hive.config.web
        paths = self._hive.agent_paths(name)
        # Read again for each page: a page added just before in this reconcile holds its port.
        rows = self._store.registry.agents()
        reserved = {self._dashboard_port} | {
            a.web_port for a in rows if a.name != name and a.web_port is not None
        }
        row = next((a for a in rows if a.name == name), None)
        draft = row is not None and row.state is AgentState.DRAFT
        # The bind test runs where the site will listen (an IPv4 host; IPv6 keeps loopback).
        free = functools.partial(is_port_free, host=self._host) if ":" not in self._host else (
            is_port_free
        )
        port_file = paths.state / PORT_FILE
        try:
            paths.state.mkdir(mode=0o700, parents=True, exist_ok=True)
            port = agent_web_port(
                name, paths.state, not draft and ConfigRepo(paths).applied_exists(),
                config.agent_port_base, config.agent_port_span, reserved=reserved, is_free=free,
            )
            self._store.registry.set_port(name, port)
            self._hive.bell.ring()
            app, fanout = self._build_site(name)
            options = replace(
                self._options,
                bind_fix=f"delete '{port_file}' to let the hive choose another port",
            )
            self._web.add_site(site_name(name), self._host, port, app, options=options)
        except (HiveError, OSError) as exc:
            message = f"the page of {name} is not served: {exc}"
            # Tried again at every reconcile: said once, until the reason changes.
            if self.errors.get(name) != message:
                log.error("gateway: %s", message)
            self.errors = {**self.errors, name: message}
            return
        self.fanouts = {**self.fanouts, name: fanout}
        self.errors = {k: v for k, v in self.errors.items() if k != name}
        log.info("gateway: page of %s on http://%s:%d/", name, self._host, port)

    def _remove(self, name: str) -> None:
        self.fanouts = {k: v for k, v in self.fanouts.items() if k != name}
        self.errors = {k: v for k, v in self.errors.items() if k != name}
        try:
            self._web.remove_site(site_name(name))
        except HiveError as exc:
            log.error("gateway: removing the page of %s failed: %s", name, exc)
        else:
            log.info("gateway: page of %s removed", name)
