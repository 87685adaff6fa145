"""Settings dataclasses, the one source of every command's options: each field's ``metadata`` holds its help, its
bounds (``min``, ``max``, ``gt``, ``lt``), ``choices`` and ``odd``; the CLI turns the fields into flags and the
functions check them with :func:`check_fields`."""
from __future__ import annotations

from dataclasses import field, fields


def option(default=None, help: str = "", **meta):
    """A dataclass field with its help and bounds (``field(default=..., metadata=...)``)."""
    return field(default=default, metadata={"help": help, **meta})


def check_value(f, value) -> None:
    """``ValueError`` naming ``--flag`` when ``value`` breaks the field's ``metadata`` bounds or choices."""
    meta, flag = f.metadata, "--" + f.name.replace("_", "-")
    if value is None or isinstance(value, bool):
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ValueError(f"{flag} {value}: choose one of {', '.join(meta['choices'])}")
    bounds = [("min", lambda v, b: v >= b, ">="), ("max", lambda v, b: v <= b, "<="),
              ("gt", lambda v, b: v > b, ">"), ("lt", lambda v, b: v < b, "<")]
    for key, ok, sign in bounds:
        if key in meta and not ok(value, meta[key]):
            raise ValueError(f"{flag} {value}: must be {sign} {meta[key]}")
    if meta.get("odd") and value % 2 == 0:
        raise ValueError(f"{flag} {value}: must be odd")


def check_fields(settings) -> None:
    """Every field of the dataclass instance ``settings`` within its bounds and choices."""
    for f in fields(settings):
        check_value(f, getattr(settings, f.name))


DEVICE_HELP = "cpu, cuda, cuda:N, mps or auto (a GPU where there is one)"
AMP_HELP = ("run the network under bf16 autocast, as training does: faster on batches where bf16 is native (CPUs "
            "with AVX-512 BF16 or AMX, recent GPUs), slower where it is emulated; scores move by up to about 1e-2 "
            "(default: float32, as the ONNX export)")
CACHE_HELP = "decoded-audio cache (default ~/.cache/audioclf)"
PATTERN_HELP = ("regex with (?P<label>) [(?P<group>) (?P<fold>)] on relative paths, or a template of the file "
                "names' fields such as '{group}_{}_{label}_{}'")
