"""``@frozen``: a frozen dataclass whose instances are built in one step.

A ``@dataclass(frozen=True)`` sets each field in its ``__init__`` through
``object.__setattr__`` (its own ``__setattr__`` refuses), one call per field: a ten-field message
costs several times what a plain class's does to build. The crash path builds one such message
at each step (the verdict, the report, the crash, the decision, the child event), where every
microsecond counts. ``@frozen`` makes the same dataclass — fields, ``eq``, ``hash``, ``repr``,
``match`` patterns, ``replace``, refusal to change after construction — and gives it an
``__init__`` with the same signature that sets the instance's dict in one step.

Classes it cannot speed up the same way (a ``default_factory``, ``__post_init__``, keyword-only
or non-``init`` fields, slots) keep the dataclass's own ``__init__``: ``@frozen`` is then
``@dataclass(frozen=True)``. :data:`STANDARD_INITS` keeps, per class sped up, the ``__init__``
the dataclass generated, so tests hold the two to the same results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform

__all__ = ["STANDARD_INITS", "frozen"]

T = TypeVar("T")

STANDARD_INITS: dict[type, Callable[..., None]] = {}
"""Class → the ``__init__`` ``dataclasses`` generated for it, for each class ``@frozen`` gave
its one-step ``__init__``."""


@dataclass_transform(frozen_default=True)
def frozen(cls: type[T]) -> type[T]:
    """``@dataclass(frozen=True)``, with instances built in one step (see the module doc)."""
    made = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(made)  # type: ignore[arg-type]
    if (
        "__slots__" in made.__dict__
        or hasattr(made, "__post_init__")
        or any(f.default_factory is not dataclasses.MISSING or not f.init or f.kw_only
               for f in fields)
        or any(f.name in ("self", "_set_dict") for f in fields)
    ):
        return made
    namespace: dict[str, Any] = {"_set_dict": object.__setattr__}
    params = []
    for f in fields:
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
    items = ", ".join(f"{f.name!r}: {f.name}" for f in fields)
    source = (f"def __init__(self, {', '.join(params)}):\n"
              f"    _set_dict(self, '__dict__', {{{items}}})\n")
    exec(source, namespace)  # noqa: S102 - built from field names only, as dataclasses does
    init = namespace["__init__"]
    standard = made.__init__
    init.__qualname__ = standard.__qualname__
    init.__annotations__ = dict(standard.__annotations__)
    init.__doc__ = standard.__doc__
    init.__module__ = made.__module__
    STANDARD_INITS[made] = standard
    made.__init__ = init  # type: ignore[method-assign]
    return made
