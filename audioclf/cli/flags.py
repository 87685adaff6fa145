"""argparse from settings dataclasses: one flag per field, its help, default, bounds and choices from the field."""
from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from ..settings import check_value

_TYPES = {"str": str, "int": int, "float": float}


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``audioclf train: error: ...``, exit 2) instead of the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's default in its help, unless the help already speaks of its default or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def checked(kind, **bounds):
    """An argparse ``type`` that converts with ``kind`` and checks the field-style ``bounds`` (min, max, gt, lt,
    odd)."""
    class Field:  # what check_value reads: a name for the message and the bounds
        name, metadata = "value", bounds

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        if kind is float and value != value:
            raise argparse.ArgumentTypeError("not a number: nan")
        try:
            check_value(Field, value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).replace("--value ", "")) from None
        return value
    convert.__name__ = kind.__name__
    return convert


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One ``--flag`` per dataclass field; booleans get ``--x/--no-x``; help, choices and bounds from the field's
    metadata; a field without a default is a required flag."""
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type).replace(" | None", "")
        meta, required = f.metadata, f.default is MISSING and f.default_factory is MISSING
        default = None if required else f.default
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=meta.get("help"))
            continue
        bounds = {k: meta[k] for k in ("min", "max", "gt", "lt", "odd") if k in meta}
        parser.add_argument(flag, type=checked(_TYPES[kind], **bounds) if bounds else _TYPES[kind],
                            choices=meta.get("choices"), default=default, help=meta.get("help"), required=required,
                            metavar=meta.get("metavar") or (None if "choices" in meta else f.name.upper()))


def settings_of(args: argparse.Namespace, cls, skip=()) -> dict:
    """The parsed values of ``cls``'s fields (those not in ``skip``)."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if f.name not in skip}
