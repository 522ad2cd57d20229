"""The daemon's heap after start-up: out of the cyclic collector's full scans.

A full (generation 2) collection walks every tracked object while holding the GIL, so every
actor thread, the web loop and the crash watcher stop for its whole length. Most of a hive's
objects are made at start-up and live as long as the process — modules, classes, the
configuration, the supervision tree — and a full collection of a hive with its web site up
measured 40–90 ms (``benchmarks/fanout.py`` sees it as a spike in its p99). :func:`settle`,
called once the tree is up, collects once and then freezes what is alive (``gc.freeze``):
later full collections scan only what came after, a fraction of that.

The price: an object frozen here is never freed by the collector if it later becomes garbage
*in a reference cycle* (reference counting still frees the rest). That is the start-up tree's
first incarnation of an actor that is restarted — bounded, and once.
"""

from __future__ import annotations

import gc

__all__ = ["settle"]


def settle() -> int:
    """Collect once, then move every object alive now out of the collector's scans; returns
    how many objects are frozen in all."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
