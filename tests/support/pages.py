"""Helpers for the page tests: Debian's Chromium driven by Playwright, headless, never
downloading a browser, and the screenshots under ``test-artifacts/`` (the ``browser`` and ``tab``
fixtures in ``tests/conftest.py`` are built on :func:`chromium` and :func:`new_tab`).

Playwright's Python package and ``/usr/bin/chromium`` (apt ``chromium``) must be installed. A
developer without them gets a skip; CI (``CI`` set) gets a failure, so a missing install step
cannot pass unseen.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.timeout import TIMEOUT

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
MS = int(TIMEOUT * 1000)
"""Playwright's waits, in milliseconds."""

__all__ = ["ARTIFACTS", "MS", "Tab", "chromium", "new_tab", "screenshot"]


def _missing(what: str) -> None:
    message = f"{what}; install it (see the report: apt chromium, pip playwright)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium, closed on exit; a skip without it (a failure on CI)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=ARGS, timeout=MS * 3
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Tab:
    """A browser page and what went wrong in it."""

    page: Any
    problems: list[str] = field(default_factory=list)

    def check(self) -> None:
        """No page error and no console error so far (call it before the hive stops: its
        websockets dropping then is expected)."""
        assert self.problems == [], self.problems


@contextlib.contextmanager
def new_tab(browser: Any, *, bypass_csp: bool = True) -> Iterator[Tab]:
    """A fresh page of ``browser`` that records page errors and console errors.

    ``bypass_csp``: Playwright's ``wait_for_function`` evaluates its predicate with ``eval``,
    which the pages' Content-Security-Policy refuses, so the tabs of the page tests ignore it;
    tests/test_pages_csp.py opens the pages with it enforced."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, bypass_csp=bypass_csp)
    page = context.new_page()
    page.set_default_timeout(MS * 3)
    out = Tab(page)
    page.on("pageerror", lambda exc: out.problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: out.problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)
    try:
        yield out
    finally:
        context.close()


def screenshot(tab: Any, name: str) -> Path:
    """Save the whole page as ``test-artifacts/<name>.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    return path
