"""Settings dataclasses that describe themselves: one help line and the valid choices per field.

A field declared with :func:`option` carries its help text (and choices) as metadata, so the command line
(``python -m mavrl_ppl.fit --help``) and error messages read them from the dataclass instead of a copy.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any


def option(default: Any, help: str, choices: Sequence[Any] | None = None) -> Any:
    """A dataclass field with a default, a help line and optionally its valid values."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None})


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_dataclass_arguments(group: Any, cls: type, prefix: str, skip: Sequence[str] = ()) -> None:
    """One ``--field-name`` flag per field of ``cls`` (stored as ``<prefix>.<field>``, default ``None`` = unset),
    with the field's help line, choices and default in the help text.

    Args:
        group: an argparse parser or argument group.
        cls: a dataclass whose fields use :func:`option` (plain fields get their default as help).
        prefix: the destination prefix, e.g. ``svi``.
        skip: field names with no flag.
    """
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = type(f.default)
        choices = f.metadata.get("choices")
        text = f.metadata.get("help", "")
        group.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f"{prefix}.{f.name}", default=None,
            type=_parse_bool if kind is bool else kind, choices=choices,
            metavar=None if choices else kind.__name__.upper(),
            help=f"{text} (default {f.default})" if text else f"(default {f.default})",
        )
