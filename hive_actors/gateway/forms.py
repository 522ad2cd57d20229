"""Form bodies of the operator's API, parsed strictly: pure, no I/O.

Every POST of the API takes ``application/x-www-form-urlencoded`` (what a browser's
``URLSearchParams`` sends, and what ``curl --data-urlencode`` sends). Anything else is refused
with a status and a message a person can act on, before the hive is asked to do anything:

* another content type → 415;
* a body that is not UTF-8, a malformed pair (``a&b``), a field given twice, an unknown field, a
  missing required field, a value over its length limit → 400.

An endpoint declares its fields with :class:`Field`; :func:`parse_form` returns the values by
name (absent optional fields are left out).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from hive_actors.errors import Refused

__all__ = [
    "FORM_TYPE",
    "MAX_MODEL_NAME",
    "BadInput",
    "Field",
    "parse_bool",
    "parse_form",
    "parse_id",
    "parse_model",
]

FORM_TYPE = "application/x-www-form-urlencoded"

MAX_MODEL_NAME = 200
"""Longest model name the store accepts."""


class BadInput(Refused):
    """A request the API refuses for its form or query: nothing was asked of the hive."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status to answer with (400, 413, 415)."""


@dataclass(frozen=True)
class Field:
    """One form field an endpoint accepts."""

    required: bool = False
    max_length: int = 200
    """Longest accepted value, in characters."""
    allow_empty: bool = True
    """Whether a present but empty value is accepted (an empty ``model`` clears the override)."""
    too_long_status: int = 400
    """The status of a value over ``max_length``: 413 for free text (a message, an answer)."""


def parse_form(
    content_type: str | None, body: bytes, fields: Mapping[str, Field]
) -> dict[str, str]:
    """The form's values by field name; raise :class:`BadInput` for anything malformed."""
    known = ", ".join(fields) or "no fields"
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if body and media != FORM_TYPE:
        raise BadInput(
            415,
            f"send the form as {FORM_TYPE} (got {media or 'no content type'!r}); "
            f"fields: {known}",
        )
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="strict")
    except UnicodeDecodeError:
        raise BadInput(400, "the form is not valid UTF-8; encode it as UTF-8") from None
    except ValueError as exc:
        raise BadInput(
            400, f"malformed form body ({exc}); send name=value pairs joined by '&'"
        ) from None
    values: dict[str, str] = {}
    for name, value in pairs:
        spec = fields.get(name)
        if spec is None:
            raise BadInput(400, f"unknown form field {name[:40]!r}; this endpoint takes: {known}")
        if name in values:
            raise BadInput(400, f"form field {name!r} is given twice; send it once")
        if len(value) > spec.max_length:
            raise BadInput(
                spec.too_long_status,
                f"form field {name!r} is {len(value)} characters, over its limit of "
                f"{spec.max_length}; send less",
            )
        if not value and not spec.allow_empty:
            raise BadInput(400, f"form field {name!r} is empty; give it a value")
        values[name] = value
    missing = [name for name, spec in fields.items() if spec.required and name not in values]
    if missing:
        raise BadInput(400, f"missing form field(s): {', '.join(missing)}; fields: {known}")
    return values


def parse_bool(name: str, value: str | None) -> bool:
    """A yes/no form value: ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``/empty."""
    if value is None:
        return False
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise BadInput(400, f"form field {name!r} = {value[:20]!r} is not a yes/no value; use 1 or 0")


def parse_id(what: str, raw: str) -> int:
    """A positive integer id from a path or query; 400 for anything else."""
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18 or int(text) < 1:
        raise BadInput(400, f"{what} {raw[:40]!r} is not an id; use a positive whole number")
    return int(text)


def parse_model(value: str) -> str | None:
    """A model override from a form: a name, or None (empty) to clear the override.

    Checked here, before the bus is asked: the store's own check raises a ConfigError, which
    the bus does not treat as a refusal (it would crash, and the services after it restart).
    """
    text = value.strip()
    if not text:
        return None
    if len(text) > MAX_MODEL_NAME or any(ch.isspace() or not ch.isprintable() for ch in text):
        raise BadInput(
            400,
            f"model {value[:40]!r} is invalid: use a model name such as 'claude-sonnet-4-5' or "
            f"'opus' (no spaces, at most {MAX_MODEL_NAME} characters), or empty to clear",
        )
    return text
