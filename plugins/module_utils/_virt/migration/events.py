# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt lifecycle events of the migrating guest on both connections, and the completed job's figures.

Each event is stamped when the event loop thread receives it (``t`` monotonic, ``ts`` epoch, ``at``
ISO UTC): that is the time checkpoints taken from events carry.
"""

from __future__ import annotations

import threading
import time

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import iso_utc

EVENT_NAMES = {
    0: "defined",
    1: "undefined",
    2: "started",
    3: "suspended",
    4: "resumed",
    5: "stopped",
    6: "shutdown",
    7: "pmsuspended",
    8: "crashed",
}
# event details (libvirt's virDomainEvent*DetailType)
STARTED_MIGRATED = 1
SUSPENDED_PAUSED = 0
SUSPENDED_MIGRATED = 1
SUSPENDED_POSTCOPY = 7
RESUMED_POSTCOPY = 3
STOPPED_MIGRATED = 3

_EVENT_LOOP = {"started": False, "ok": False}
_EVENT_LOCK = threading.Lock()


def start_event_loop():
    """Register libvirt's default event loop and run it in a daemon thread (once per process).

    Must run before the connections are opened. Returns False when events are unavailable.
    """
    with _EVENT_LOCK:
        if _EVENT_LOOP["started"]:
            return _EVENT_LOOP["ok"]
        _EVENT_LOOP["started"] = True
        if libvirt is None:
            return False
        try:
            libvirt.virEventRegisterDefaultImpl()
            # a periodic timer makes each loop iteration return, so the thread never blocks forever
            libvirt.virEventAddTimeout(200, lambda *_a: None, None)
        except Exception:
            return False

        def run():
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:
                    time.sleep(0.2)

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _EVENT_LOOP["ok"] = True
        return True


class LifecycleEvents:
    """Lifecycle events of one guest on several connections, each stamped on arrival.

    ``on_event(item)`` (optional) runs in the event thread and must not block. ``wait_for`` wakes as soon
    as a matching event arrives (a condition variable, no polling).
    """

    def __init__(self, name, clock=time.monotonic, wall=time.time, on_event=None):
        self.name = name
        self.clock = clock
        self.wall = wall
        self.on_event = on_event
        self.items = []
        self._ids = []
        self._cond = threading.Condition()
        self.available = False

    def add(self, role, event, detail, dom=None):
        """Record an event (called by the libvirt callback; fakes call it directly)."""
        ts = self.wall()
        item = {
            "dom": dom,
            "role": role,
            "event": EVENT_NAMES.get(event, str(event)) if isinstance(event, int) else event,
            "detail": detail,
            "t": self.clock(),
            "ts": ts,
            "at": iso_utc(ts),
        }
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()
        if self.on_event is not None:
            try:
                self.on_event(item)
            except Exception:
                pass
        return item

    def watch(self, conn, role):
        if not _EVENT_LOOP["ok"] or libvirt is None:
            return False

        def callback(_conn, dom, event, detail, _opaque):
            try:
                if dom.name() != self.name:
                    return
            except Exception:
                return
            self.add(role, event, detail, dom)

        try:
            cid = conn.virt.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, None)
        except Exception:
            return False
        self._ids.append((conn, cid))
        self.available = True
        return True

    def _find(self, role, event, detail=None, after=None):
        for item in self.items:
            if item["role"] == role and item["event"] == event and (detail is None or item["detail"] in detail):
                if after is None or item["t"] >= after:
                    return item
        return None

    def first(self, role, event, detail=None, after=None):
        """The first matching event; ``detail`` is one detail value or a tuple of them."""
        if detail is not None and not isinstance(detail, (tuple, list, set)):
            detail = (detail,)
        with self._cond:
            return self._find(role, event, detail, after)

    def wait_for(self, role, event, detail=None, timeout=2.0, after=None):
        if detail is not None and not isinstance(detail, (tuple, list, set)):
            detail = (detail,)
        deadline = self.clock() + timeout
        with self._cond:
            while True:
                found = self._find(role, event, detail, after)
                left = deadline - self.clock()
                if found or not self.available or left <= 0:
                    return found
                self._cond.wait(left)

    def wait_any(self, timeout):
        """Sleep until the next event arrives or ``timeout`` seconds pass."""
        with self._cond:
            n = len(self.items)
            self._cond.wait_for(lambda: len(self.items) != n, timeout)

    def as_list(self):
        with self._cond:
            items = sorted(self.items, key=lambda i: i["ts"])
            return [{"role": i["role"], "event": i["event"], "detail": i["detail"], "at": i["at"]} for i in items]

    def close(self):
        for conn, cid in self._ids:
            try:
                conn.virt.domainEventDeregisterAny(cid)
            except Exception:
                pass
        self._ids = []


def job_summary(stats):
    """The job figures returned to users from libvirt's completed-job statistics."""
    if not stats:
        return {}
    return {
        "elapsed_ms": stats.get("time_elapsed"),
        "downtime_ms": stats.get("downtime"),
        "data_total": stats.get("data_total"),
        "data_processed": stats.get("data_processed"),
        "memory_iterations": stats.get("memory_iteration"),
        "memory_bps": stats.get("memory_bps"),
        "setup_ms": stats.get("setup_time"),
    }


def ms_between(start, end):
    if start is None or end is None:
        return None
    return max(0, int(round((end - start) * 1000)))
