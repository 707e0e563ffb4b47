# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An ordered checkpoint recorder for every module that starts, stops or moves a guest.

Each checkpoint: ``{name, host, at, ok, resources, detail}`` with ``at`` in UTC, ISO 8601 with
milliseconds (``2024-05-01T12:00:00.123Z``). The list is returned as ``lock_checkpoints``.
"""

from __future__ import annotations

import socket
from datetime import datetime, timezone


def utc_now():
    """Current UTC time as ISO 8601 with milliseconds and a Z suffix."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + "{:03d}Z".format(now.microsecond // 1000)


class CheckpointRecorder:
    """Records checkpoints in order. ``host`` defaults to this machine's host name."""

    def __init__(self, host=None, clock=utc_now):
        self.host = host or socket.gethostname()
        self._clock = clock
        self._items = []

    def record(self, name, ok=True, resources=None, detail=None, host=None):
        """Append a checkpoint and return it."""
        item = {
            "name": name,
            "host": host or self.host,
            "at": self._clock(),
            "ok": bool(ok),
            "resources": list(resources or []),
            "detail": detail,
        }
        self._items.append(item)
        return item

    def names(self):
        return [c["name"] for c in self._items]

    def last(self):
        return self._items[-1] if self._items else None

    def as_list(self):
        return [dict(c, resources=list(c["resources"])) for c in self._items]

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return iter(self.as_list())
