"""An output stream a test can wait on (the CLI's ``out`` in tests that run ``main``)."""

from __future__ import annotations

import io
import threading

__all__ = ["Watched"]


class Watched(io.StringIO):
    """An output stream that tells the test when a line it waits for was written."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.seen = threading.Event()

    def write(self, s: str) -> int:
        n = super().write(s)
        if self.needle in self.getvalue():
            self.seen.set()
        return n
