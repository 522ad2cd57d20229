"""``python -m hive_actors`` is the ``hive`` command."""

from __future__ import annotations

import sys

from hive_actors.cli import main

sys.exit(main())
