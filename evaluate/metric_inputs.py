"""The one check every metric makes on its inputs: answers are strings.

A `None` (a failed generation, a hand-edited predictions file, another harness's output) would
otherwise fail deep inside a normaliser with an AttributeError that names nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

_SHOWN = 5  # items named in one error


def require_strings(values: Sequence[object], what: str, ids: Sequence[object] | None = None) -> None:
    """A TypeError naming the items (by id, else by position) whose `what` is not a string."""
    bad = [(index if ids is None else ids[index], value) for index, value in enumerate(values) if not isinstance(value, str)]
    if not bad:
        return
    label = "item" if ids is not None else "index"
    shown = ", ".join(f"{label} {key!r}: {type(value).__name__} {value!r}" for key, value in bad[:_SHOWN])
    more = f", ... ({len(bad) - _SHOWN} more)" if len(bad) > _SHOWN else ""
    raise TypeError(f"{len(bad)} {what}(s) are not strings ({shown}{more})")
