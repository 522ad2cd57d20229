"""The web gateway actor and its app."""

from __future__ import annotations
