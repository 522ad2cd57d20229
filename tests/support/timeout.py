"""The suite's one timeout unit for every wait; CI machines are slower, so it scales
(``HIVE_TEST_TIMEOUT``, seconds)."""

from __future__ import annotations

import os

__all__ = ["TIMEOUT"]

TIMEOUT = float(os.environ.get("HIVE_TEST_TIMEOUT", "10"))
