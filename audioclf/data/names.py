"""Labels in file names: the ``{field}`` form of ``--pattern``, and what a folder's file names hold.

Many data sets name their labels in the file name (CREMA-D's ``1001_DFA_ANG_XX.wav``, RAVDESS's
``03-01-05-01-02-01-12.wav``, FSDD's ``3_jackson_12.wav``) instead of a folder per class. A template such as
``{group}_{}_{label}_{}`` says which field is which.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

FIELD = re.compile(r"\{(label|group|fold)?\}")
SEPARATORS = ("_", "-", ".", " ")
NUMBERED = re.compile(r"(?P<word>.*[^\d\s_-])[\s_-]*\d+")  # a word, then a number: Actor_01, spk3
MAX_LABEL_VALUES = 50  # a field with more distinct values is rarely a label (a take number, a speaker id)


def is_template(pattern: str) -> bool:
    """Whether ``pattern`` is a ``{field}`` template rather than a regular expression: it names ``{label}`` and
    holds no regex named group."""
    return "{label}" in pattern and "(?P<" not in pattern


def template_regex(template: str) -> str:
    """The regular expression of a template, searched in a file's path relative to the data root
    (``/``-separated). ``{label}``, ``{group}`` and ``{fold}`` capture a field, ``{}`` skips one; the text between
    them is literal. A field is the text up to the next separator: it holds neither ``/`` nor the characters
    written beside it, so ``{}_{label}`` matches ``a_b.wav`` and not ``a_b_c.wav``. The template covers the end
    of the path, with or without the file's extension: ``{label}/{}`` is a class folder, then the file."""
    pieces: list[tuple[str, str | None]] = []  # (literal text before a field, the field's name, "" or None: the end)
    end = 0
    for m in FIELD.finditer(template):
        pieces.append((template[end:m.start()], m.group(1) or ""))
        end = m.end()
    pieces.append((template[end:], None))
    parts = []
    for (text, name), (after, _) in zip(pieces, pieces[1:]):
        beside = {"/", *text[-1:], *after[:1]}
        chars = "[^" + "".join(re.escape(c) for c in sorted(beside)) + "]+"
        parts += [re.escape(text), f"(?P<{name}>{chars})" if name else chars]
    tail = pieces[-1][0]
    extension = "" if re.search(r"\.\w+$", tail) else r"\.[^/.]+"
    return r"(?:^|/)" + "".join(parts) + re.escape(tail) + extension + "$"


def name_fields(paths: list[Path]) -> tuple[str, list[Counter]] | None:
    """The separator that cuts every file name (extension left out) into the same number of fields, two or more
    (the one giving the most fields), and the values each field takes; None when no separator does."""
    stems = [p.stem for p in paths]
    best = None
    for sep in SEPARATORS:
        counts = {len(s.split(sep)) for s in stems}
        if len(counts) == 1 and (n := counts.pop()) >= 2 and (best is None or n > best[1]):
            best = (sep, n)
    if not stems or best is None:
        return None
    sep, n = best
    return sep, [Counter(s.split(sep)[i] for s in stems) for i in range(n)]


def describe_names(paths: list[Path]) -> str | None:
    """What the file names hold, for a hint: the separator, how many values each field takes, and an example
    template with ``{label}`` on the first field that takes 2 to ``MAX_LABEL_VALUES`` values; None when the names do
    not split into fields or no field could be a label."""
    found = name_fields(paths)
    if found is None:
        return None
    sep, fields = found
    label = next((i for i, c in enumerate(fields) if 2 <= len(c) <= MAX_LABEL_VALUES), None)
    if label is None:
        return None
    counts = [str(len(c)) for c in fields]
    example = sep.join("{label}" if i == label else "{}" for i in range(len(fields)))
    return (f"the file names are {len(fields)} fields separated by {sep!r} ({paths[0].name}; they take "
            f"{', '.join(counts[:-1])} and {counts[-1]} distinct values): name the label's field in --pattern, "
            f"{{}} for the others and {{group}} for a speaker's or recording's, e.g. --pattern '{example}' "
            f"(field {label + 1})")


def numbered_like_groups(names: list[str]) -> bool:
    """Three or more folder names that differ only in a number after one word (``Actor_01`` ... ``Actor_24``,
    ``spk3``): more often speakers or sessions than classes."""
    words = {m.group("word").lower() if (m := NUMBERED.fullmatch(n)) else None for n in names}
    return len(names) >= 3 and len(words) == 1 and None not in words
