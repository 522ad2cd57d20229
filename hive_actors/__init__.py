"""hive_actors: a hive of Claude Code agents, run as supervised actors.

The package is laid out by role: ``actor`` (the actor base over pykka),
``supervisors/`` (OTP-style supervision trees), ``clock`` (injected time),
``errors`` (the one exception tree), and ``cli`` (the ``hive`` command).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
