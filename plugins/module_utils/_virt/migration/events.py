# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt lifecycle events of a migrating guest, from both hosts, timestamped as they arrive.

A libvirt event loop thread (:func:`start_event_loop`, once per process, before any connection opens)
delivers each host's lifecycle events; :class:`LifecycleEvents` keeps them with a monotonic time and a UTC
time, and calls ``on_event`` in the event thread (which must return quickly: it only signals).
"""

from __future__ import annotations

import threading
import time

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import utc_now

# lifecycle event details used by the handoff (libvirt's virDomainEvent*DetailType)
STARTED_MIGRATED = 1
SUSPENDED_PAUSED = 0
SUSPENDED_MIGRATED = 1
RESUMED_POSTCOPY = 3

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
    """Lifecycle events of one guest on several connections, each with monotonic and UTC arrival times.

    ``on_event(role, event, detail, item)`` (optional) runs in the event thread.
    """

    def __init__(self, name, clock=time.monotonic, on_event=None):
        self.name = name
        self.clock = clock
        self.on_event = on_event
        self.items = []
        self._ids = []
        self._lock = threading.Lock()
        self.available = False

    def watch(self, conn, role):
        if not _EVENT_LOOP["ok"] or libvirt is None:
            return False

        def callback(_conn, dom, event, detail, _opaque):
            try:
                if dom.name() != self.name:
                    return
            except Exception:
                return
            item = {
                "role": role,
                "event": EVENT_NAMES.get(event, str(event)),
                "detail": detail,
                "t": self.clock(),
                "at": utc_now(),
            }
            with self._lock:
                self.items.append(item)
            if self.on_event is not None:
                try:
                    self.on_event(role, item["event"], detail, item)
                except Exception:
                    pass

        try:
            cid = conn.virt.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, None)
        except Exception:
            return False
        self._ids.append((conn, cid))
        self.available = True
        return True

    def first(self, role, event, detail=None, after=None):
        with self._lock:
            for item in self.items:
                if item["role"] == role and item["event"] == event and (detail is None or item["detail"] == detail):
                    if after is None or item["t"] >= after:
                        return item
        return None

    def as_list(self):
        with self._lock:
            return [{"role": i["role"], "event": i["event"], "detail": i["detail"], "at": i["at"]} for i in self.items]

    def close(self):
        for conn, cid in self._ids:
            try:
                conn.virt.domainEventDeregisterAny(cid)
            except Exception:
                pass
        self._ids = []
