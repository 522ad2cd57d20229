"""The dashboard in a real headless Chromium against a whole running hive: approve a spawn and
see the agent appear, answer a question, see a crash and its restart live, revive from
K3PT ST4T3 — all without a reload."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from hive_actors.protocol import AskOperator, RequestApproval
from hive_actors.store import AgentState, ApprovalKind, MessageKind, Role
from tests.support.gateway import gateway_hive, wait_state
from tests.support.hive import commit_agent_toml, send
from tests.support.pages import MS, Tab, screenshot


def row(page: Any, agent: str, cell: str) -> Any:
    return page.locator(f'tr[data-agent="{agent}"] td.{cell}')


def test_approve_a_spawn_answer_a_question_and_message_an_agent(tmp_path: Path, tab: Tab) -> None:
    page = tab.page
    with gateway_hive(tmp_path, {"boss": Role.MANAGER}) as hive:
        page.goto(hive.login_url())  # logs in, then the dashboard
        page.wait_for_selector('tr[data-agent="boss"]')
        assert page.locator("#live").inner_text().startswith("live")

        # The manager asks; the page shows it live, with the diff coloured line by line.
        approval = hive.ask("approvals", RequestApproval(
            ApprovalKind.SPAWN, "carol", "boss", diff=hive.daemon.desk.spawn_diff("carol")))
        question = hive.ask("approvals", AskOperator("boss", "Docs or tests first?"))
        card = page.locator(f'[data-approval="{approval.id}"]')
        card.wait_for()
        assert card.locator(".d-add").count() >= 5
        assert card.locator(".d-meta").first.inner_text().startswith("new agent carol")
        page.locator(f'[data-question="{question.id}"]').wait_for()
        screenshot(page, "dashboard-approval-and-question")

        card.locator("button.approve").click()
        card.wait_for(state="detached")
        page.wait_for_selector('tr[data-agent="carol"]')
        page.wait_for_function(
            "document.querySelector('tr[data-agent=\"carol\"] .state').textContent === 'idle'")

        asked = page.locator(f'[data-question="{question.id}"]')
        asked.locator("textarea").fill("Docs first, please.")
        asked.locator("button.answer").click()
        asked.wait_for(state="detached")
        with hive.daemon.hive.open_store() as store:
            answered = store.questions.get(question.id)
            assert answered.answer == "Docs first, please."
            assert answered.message_id is not None
            assert store.messages.get(answered.message_id).kind is MessageKind.OPERATOR

        # The spawn box and the message box.
        page.fill("#spawn-name", "dave")
        page.click("#spawn-form button")
        page.wait_for_selector('tr[data-agent="dave"]')
        page.select_option("#message-agent", "carol")
        page.fill("#message-text", "welcome, carol")
        page.click("#message-form button")
        page.wait_for_function(
            "document.querySelector('tr[data-agent=\"carol\"] td.turns').textContent === '1'",
            timeout=MS * 6)
        assert "done" in page.locator("#operator-result").inner_text()
        screenshot(page, "dashboard-after-decisions")
        tab.check()


def test_a_crash_and_its_restart_appear_live(tmp_path: Path, tab: Tab) -> None:
    page = tab.page
    with gateway_hive(
        tmp_path, {"alice": Role.AGENT}, backoff_min=0.05, backoff_max=0.2, backoff_jitter=0.0
    ) as hive:
        page.goto(hive.login_url())  # logs in, then the dashboard
        page.wait_for_selector('tr[data-agent="alice"]')
        assert row(page, "alice", "restarts").inner_text() == "0"
        mark = hive.last_event_id()
        keeper = hive.daemon.backend.status("alice").pid
        assert keeper is not None
        os.kill(keeper, signal.SIGKILL)
        page.wait_for_function(
            "document.querySelector('tr[data-agent=\"alice\"] td.restarts').textContent === '1'")
        page.locator("#feed .k-agent-restarting").first.wait_for()
        wait_state(hive, "alice", AgentState.IDLE, after=mark)
        page.wait_for_function(
            "document.querySelector('tr[data-agent=\"alice\"] .state').textContent === 'idle'")
        assert "restarting" in page.locator("#feed .k-agent-restarting").first.inner_text()
        screenshot(page, "dashboard-crash-restart")
        tab.check()


def test_kept_state_is_revived_from_its_card(tmp_path: Path, tab: Tab) -> None:
    page = tab.page
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:
        page.goto(hive.login_url())  # logs in, then the dashboard
        page.wait_for_selector('tr[data-agent="alice"]')
        with hive.api() as api:
            assert api.post("/api/agents/alice/destroy").status_code == 200
        card = page.locator('[data-kept="alice"]')
        card.wait_for()
        assert page.locator('tr[data-agent="alice"]').count() == 0
        screenshot(page, "dashboard-kept-state")
        mark = hive.last_event_id()
        card.locator("button", has_text="Revive").click()
        card.wait_for(state="detached")
        wait_state(hive, "alice", AgentState.IDLE, after=mark)
        page.wait_for_function(
            "document.querySelector('tr[data-agent=\"alice\"] .state').textContent === 'idle'")
        tab.check()


def test_a_revive_approval_shows_its_reason_and_approving_it_revives(
    tmp_path: Path, tab: Tab
) -> None:
    """The manager's revive ([supervision] revive_needs_approval) waits on the dashboard with
    its reason; approved, the agents' supervisor starts the agent again."""
    page = tab.page
    with gateway_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT}) as hive:
        page.goto(hive.login_url())  # logs in, then the dashboard
        page.wait_for_selector('tr[data-agent="alice"]')
        wait_state(hive, "alice", AgentState.IDLE)
        with hive.api() as api:
            assert api.post("/api/agents/alice/stop").status_code == 200
        wait_state(hive, "alice", AgentState.STOPPED)
        approval = hive.ask("approvals", RequestApproval(
            ApprovalKind.REVIVE, "alice", "boss", reason="alice crashed twice; fixed since"))
        card = page.locator(f'[data-approval="{approval.id}"]')
        card.wait_for()
        assert card.locator("strong").inner_text() == f"#{approval.id} revive alice"
        assert card.locator(".reason").inner_text() == "reason: alice crashed twice; fixed since"
        assert card.locator("pre.diff").count() == 0
        screenshot(page, "dashboard-revive-approval")
        mark = hive.last_event_id()
        card.locator("button.approve").click()
        card.wait_for(state="detached")
        wait_state(hive, "alice", AgentState.IDLE, after=mark)
        with hive.daemon.hive.open_store() as store:
            assert store.approvals.get(approval.id).outcome == "agent reviving"
        tab.check()


def test_a_draft_shows_in_drafts_with_its_commit_and_diff_until_approved(
    tmp_path: Path, tab: Tab
) -> None:
    """Two-step spawn as the operator sees it: the manager's draft appears under DRAFTS
    (between K3PT ST4T3 and APPROVALS), its commit's approval carries the diff, and once approved
    the draft leaves DRAFTS for AGENTS."""
    page = tab.page
    with gateway_hive(tmp_path, {"boss": Role.MANAGER}) as hive:
        page.goto(hive.login_url())  # logs in, then the dashboard
        page.wait_for_selector('tr[data-agent="boss"]')
        order = page.eval_on_selector_all(
            "main > section", "sections => sections.map(s => s.id)")
        assert order.index("kept-section") < order.index("drafts-section") < order.index(
            "approvals-section"), order
        assert page.locator("#drafts-empty").is_visible()

        send(hive.daemon, "boss", '@tool mcp__hive__request_spawn_draft {"name": "dora"}')
        card = page.locator('#drafts [data-draft="dora"]')
        card.locator(".hint", has_text="being edited by the manager").wait_for()
        assert not page.locator("#drafts-empty").is_visible()

        # The manager edits the draft and submits its commit (the test plays its git).
        proposed = hive.daemon.hive.agent_paths("dora").config / "proposed"
        sha = commit_agent_toml(proposed, 'model = "claude-haiku-test"\n', "dora: a smaller model")
        send(hive.daemon, "boss",
             f'@tool mcp__hive__request_spawn_commit {{"name": "dora", "ref": "{sha}"}}')
        card.locator(".hint", has_text=f"({sha[:10]}) waits below").wait_for()
        approval = page.locator('[data-approval]', has_text="dora")
        approval.wait_for()
        assert approval.locator(".d-add", has_text='+model = "claude-haiku-test"').count() == 1
        screenshot(page, "dashboard-draft-and-commit")

        mark = hive.last_event_id()
        approval.locator("button.approve").click()
        card.wait_for(state="detached")
        wait_state(hive, "dora", AgentState.IDLE, after=mark)
        page.locator('tr[data-agent="dora"]').wait_for()
        assert page.locator("#drafts-empty").is_visible()
        tab.check()

