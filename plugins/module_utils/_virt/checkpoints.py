# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An ordered checkpoint recorder for every module that starts, stops or moves a guest.

Each checkpoint: ``{name, host, at, ok, source, verified, check, resources, detail}``.

- ``at``: when the thing happened, in UTC, ISO 8601 with milliseconds (``2024-05-01T12:00:00.123Z``),
  taken from whatever saw it; ``source`` says which: ``event`` (a libvirt lifecycle event, stamped as it
  arrived), ``probe`` (a lease or state probe, stamped when it ran) or ``api`` (a libvirt call, stamped
  when it returned).
- ``verified``: whether the claim was checked, and ``check`` with what (``None`` when it was not).

The list, returned as ``lock_checkpoints``, is ordered by ``at`` (ties keep the recording order).
"""

from __future__ import annotations

import socket
from datetime import datetime, timezone

SOURCES = ("event", "probe", "api")


def utc_now():
    """Current UTC time as ISO 8601 with milliseconds and a Z suffix."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + "{:03d}Z".format(now.microsecond // 1000)


class CheckpointRecorder:
    """Records checkpoints. ``host`` defaults to this machine's host name."""

    def __init__(self, host=None, clock=utc_now):
        self.host = host or socket.gethostname()
        self._clock = clock
        self._items = []

    def record(self, name, ok=True, resources=None, detail=None, host=None, at=None, source="api", check=None):
        """Append a checkpoint and return it.

        ``at`` defaults to now (the caller just saw the thing happen); ``check`` names what verified the
        claim (a probe, a state read): a checkpoint without one says ``verified: false``.
        """
        if source not in SOURCES:
            raise ValueError("checkpoint source must be one of {}".format(", ".join(SOURCES)))
        item = {
            "name": name,
            "host": host or self.host,
            "at": at or self._clock(),
            "ok": bool(ok),
            "source": source,
            "verified": check is not None,
            "check": check,
            "resources": list(resources or []),
            "detail": detail,
        }
        self._items.append(item)
        return item

    def _ordered(self):
        return [c for _i, c in sorted(enumerate(self._items), key=lambda p: (p[1]["at"], p[0]))]

    def names(self):
        return [c["name"] for c in self._ordered()]

    def last(self):
        return self._items[-1] if self._items else None

    def find(self, name):
        """The last checkpoint recorded under ``name``, or None."""
        for item in reversed(self._items):
            if item["name"] == name:
                return item
        return None

    def as_list(self):
        return [dict(c, resources=list(c["resources"])) for c in self._ordered()]

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return iter(self.as_list())


class PhaseRecorder:
    """Lets a Lifecycle record into another recorder under ``phase/name`` names.

    ``names`` maps Lifecycle's names to ours; a name mapped to None is not recorded.
    """

    def __init__(self, recorder, phase, names=None, host=None):
        self.recorder = recorder
        self.phase = phase
        self.names = dict(names or {})
        self.host = host

    def record(self, name, ok=True, resources=None, detail=None, host=None, at=None, source="api", check=None):
        mapped = self.names.get(name, name)
        if mapped is None:
            return None
        return self.recorder.record(
            "{}/{}".format(self.phase, mapped),
            ok=ok,
            resources=resources,
            detail=detail,
            host=host or self.host,
            at=at,
            source=source,
            check=check,
        )

    def last(self):
        return self.recorder.last()
