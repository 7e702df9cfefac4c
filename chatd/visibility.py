"""Who may receive which event (PROTOCOL.md "Who sees what"), as pure functions.

An event of a public channel goes to every user. An event of a private or dm
channel goes to the users that were members of the channel at its seq; an
account event (``read.updated``) to its own user only. Membership is kept as
seq intervals ``[from_seq, to_seq]`` (``to_seq`` None while it lasts): the
interval opens at the member's ``channel.created`` or ``member.added`` and
closes at its ``member.removed`` or the ``channel.deleted``, both included, so
the added user gets its ``member.added`` and the removed one its
``member.removed``, and nothing of the channel after it.

Two readers decide with these rules, neither with a query per event:

* a replay for one user (:func:`visible_to`): the SQL read already left out
  what the user can never see; the user's intervals, read once per page, decide
  the rest;
* the tail of a shared database (:func:`published`): the intervals of the
  page's restricted channels, read once per page, give each event its audience,
  as the writer gives it to its own events when it commits them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from .ops import Published
from .storage import EventRow, IntervalRow


def _covers(start: int, end: int | None, seq: int) -> bool:
    return start <= seq and (end is None or seq <= end)


def visible_to(
    user_id: str, rows: Iterable[EventRow], intervals: Iterable[IntervalRow]
) -> list[tuple[int, bytes]]:
    """(seq, frame) of the ``rows`` that ``user_id`` may receive, given its intervals."""
    mine: dict[str, list[tuple[int, int | None]]] = defaultdict(list)
    for channel_id, member, start, end in intervals:
        if member == user_id:
            mine[channel_id].append((start, end))
    out: list[tuple[int, bytes]] = []
    for seq, frame, channel_id, restricted, only_user in rows:
        if only_user is not None and only_user != user_id:
            continue
        if restricted and not any(_covers(s, e, seq) for s, e in mine.get(channel_id, ())):
            continue
        out.append((seq, bytes(frame)))
    return out


def published(rows: Iterable[EventRow], intervals: Iterable[IntervalRow]) -> list[Published]:
    """The ``rows`` with their audiences, given the intervals of their restricted
    channels (every member)."""
    by_channel: dict[str, list[tuple[str, int, int | None]]] = defaultdict(list)
    for channel_id, member, start, end in intervals:
        by_channel[channel_id].append((member, start, end))
    out: list[Published] = []
    for seq, frame, channel_id, restricted, only_user in rows:
        audience: frozenset[str] | None = None
        if only_user is not None:
            audience = frozenset((only_user,))
        elif restricted:
            audience = frozenset(
                m for m, s, e in by_channel.get(channel_id, ()) if _covers(s, e, seq))
        out.append(Published(seq, channel_id, bytes(frame), audience))
    return out
