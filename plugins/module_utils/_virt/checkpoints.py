# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An ordered checkpoint recorder for every module that starts, stops or moves a guest.

Each checkpoint: ``{name, host, at, source, ok, verified, verified_by, resources, detail}``.

- ``at``: when the thing happened, in UTC, ISO 8601 with milliseconds (``2024-05-01T12:00:00.123Z``),
  taken from what saw it: a libvirt event's arrival, a probe sample, an API call's return;
- ``source``: ``event``, ``probe`` or ``api`` - which of those it was;
- ``verified``: whether the claim was checked, and ``verified_by`` with what (a lease probe, a state
  read), or None.

The list is returned ordered by ``at`` (ties keep the order of recording) as ``lock_checkpoints``.
"""

from __future__ import annotations

import socket
import time
from datetime import datetime, timezone

SOURCES = ("event", "probe", "api")


def iso_utc(epoch):
    """``epoch`` seconds as ISO 8601 UTC with milliseconds and a Z suffix."""
    when = datetime.fromtimestamp(epoch, timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + "{:03d}Z".format(when.microsecond // 1000)


def utc_now():
    """Current UTC time as ISO 8601 with milliseconds and a Z suffix."""
    return iso_utc(time.time())


class CheckpointRecorder:
    """Records checkpoints; lists them ordered by ``at``. ``host`` defaults to this machine's host name.

    ``wall``: the wall clock (epoch seconds) for checkpoints recorded without an ``at``.
    """

    def __init__(self, host=None, wall=time.time):
        self.host = host or socket.gethostname()
        self._wall = wall
        self._items = []

    def record(
        self,
        name,
        ok=True,
        resources=None,
        detail=None,
        host=None,
        at=None,
        source="api",
        verified=None,
        verified_by=None,
    ):
        """Append a checkpoint and return it.

        ``at``: epoch seconds when it happened (default: now, i.e. when the caller saw it). ``verified``
        defaults to whether ``verified_by`` names a check.
        """
        if source not in SOURCES:
            raise ValueError("checkpoint source must be one of {}".format(", ".join(SOURCES)))
        ts = self._wall() if at is None else at
        item = {
            "name": name,
            "host": host or self.host,
            "at": iso_utc(ts),
            "source": source,
            "ok": bool(ok),
            "verified": bool(verified_by) if verified is None else bool(verified),
            "verified_by": verified_by,
            "resources": list(resources or []),
            "detail": detail,
            "_ts": ts,
        }
        self._items.append(item)
        return item

    def _ordered(self):
        return sorted(self._items, key=lambda c: c["_ts"])  # stable: ties keep the recording order

    def names(self):
        return [c["name"] for c in self._ordered()]

    def last(self):
        """The checkpoint recorded last (not necessarily the latest ``at``)."""
        return self._items[-1] if self._items else None

    def find(self, name):
        for c in self._items:
            if c["name"] == name:
                return c
        return None

    def as_list(self):
        out = []
        for c in self._ordered():
            item = {k: v for k, v in c.items() if k != "_ts"}
            item["resources"] = list(c["resources"])
            out.append(item)
        return out

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return iter(self.as_list())
