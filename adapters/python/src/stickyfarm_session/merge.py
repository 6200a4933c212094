"""What an adapter does with a 409 (the same rule in every adapter; docs/session-api.md).

The framework wrote the whole session document, based on the version it read, and another
request wrote the table since. This request's own changes are applied key by key on top of what
the table holds now; when both changed the same key to different values, nobody's change may
be dropped silently, so the write is refused instead.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional


class SessionConflict(Exception):
    """This request and another changed the same keys of one session at the same time."""

    def __init__(self, keys: list[str]):
        super().__init__(
            f"the session was changed by another request at the same time (keys: {', '.join(keys)}); "
            "nothing of this request was saved: reload and try again"
        )
        self.keys = keys


_MISSING = object()


def merge_session(
    base: Optional[Mapping[str, Any]],
    mine: Mapping[str, Any],
    current: Optional[Mapping[str, Any]],
    mine_wins: Iterable[str] = (),
) -> dict[str, Any]:
    """The document to write instead of `mine`, or SessionConflict."""
    b = base or {}
    merged = dict(current or {})
    wins = set(mine_wins)
    clashes = []
    for key in list(b) + [k for k in mine if k not in b]:
        m, o = mine.get(key, _MISSING), b.get(key, _MISSING)
        if m == o:
            continue
        now = merged.get(key, _MISSING)
        if now != o and now != m and key not in wins:
            clashes.append(key)
            continue
        if m is _MISSING:
            merged.pop(key, None)
        else:
            merged[key] = m
    if clashes:
        raise SessionConflict(clashes)
    return merged
