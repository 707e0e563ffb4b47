# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration manager: a live migration whose lease handoff is explicit, verified and recorded.

One class, :class:`MigrationManager`, assembled from its phases:

- :mod:`.preflight`  connect, inspect both hosts, the checks and the plan (check mode stops there);
- :mod:`.reconcile`  what an interrupted earlier run left behind: finish the handoff or resume the source;
- :mod:`.transfer`   the send in a worker thread while the main thread watches events and the job;
- :mod:`.handoff`    the destination has finished receiving and nobody holds the leases: resume it,
  verify, confirm the source;
- :mod:`.timing`     ``downtime_ms`` / ``lease_gap_ms`` from events on both ends, the job's figures.

It never calls exit_json/fail_json: :meth:`MigrationManager.run` returns the result or raises VirtError
carrying the whole result. The checkpoint story is in docs/guides/lease-safe-migration.md.
"""

from __future__ import annotations

import threading
import time

from ansible_collections.lockstep.virt.plugins.module_utils._virt.connection import Connection
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import VirtError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import read_lock_config
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.migration.handoff import (
    RELEASE_WAIT,
    SOURCE_STOP_WAIT,
    HandoffPhase,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.migration.preflight import PreflightPhase
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.migration.reconcile import ReconcilePhase
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.migration.timing import TimingPhase
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.migration.transfer import TransferPhase
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration import (
    LeaseView,
    lease_summary,
    public_leases,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup


class MigrationManager(PreflightPhase, ReconcilePhase, TransferPhase, HandoffPhase, TimingPhase):
    """Migrate ``params['name']`` from ``params['uri']`` to ``params['dest_uri']``.

    ``open_conn(uri)`` opens a Connection; ``lease_view(lock_config)`` gives the LeaseView (both
    injectable for tests, as are ``sleep``/``clock``/``wall``). ``events``: True to watch libvirt
    lifecycle events, False to watch by polling the destination's state, or a factory
    ``events(name, clock, wall)`` returning a LifecycleEvents-like object (tests).
    """

    def __init__(
        self,
        params,
        check_mode=False,
        open_conn=Connection,
        lease_view=LeaseView,
        events=True,
        sleep=time.sleep,
        clock=time.monotonic,
        wall=time.time,
        read_config=read_lock_config,
    ):
        self.params = params
        self.check_mode = check_mode
        self.open_conn = open_conn
        self.lease_view_factory = lease_view
        self.use_events = events
        self.sleep = sleep
        self.clock = clock
        self.wall = wall
        self.read_config = read_config
        self.name = params["name"]
        self.warnings = []
        self.src = self.dest = None
        self.src_name = self.dest_name = None
        self.rec = None
        self.events = None
        self.plan = None
        self.checks = []
        self.resources = []
        self.marks = {}
        self.job = {}
        self._lock = threading.Lock()
        self._send_done = False
        self.monitor = None
        self.outcome = None
        self.handoff_error = None  # a failed handoff step, raised once the migration call has returned
        self.marked = False  # the handoff marker was written into the guest's metadata
        self.changed_before = False  # an earlier run's leftover was reconciled before migrating
        self.release_wait = RELEASE_WAIT
        self.source_stop_wait = SOURCE_STOP_WAIT
        self.sent = False  # the send was started: from here every failure returns the whole result

    # ------------------------------------------------------------------ plumbing
    def run(self):
        try:
            return self._run()
        except VirtError as err:
            if not err.result and self.sent:
                err.result = self._result(changed=self._changed_now(), state=self._dest_state_now())
                self._timing(err.result)
            raise
        finally:
            if self.events is not None:
                self.events.close()
            for conn in (self.dest, self.src):
                if conn is not None:
                    conn.close()

    def _result(self, changed=False, state=None, leases=None):
        out = {
            "changed": changed,
            "name": self.name,
            "source": self.src_name,
            "dest": self.dest_name,
            "state": state,
            "lock_checkpoints": self.rec.as_list() if self.rec is not None else [],
            "lease_gap_ms": None,
            "downtime_ms": None,
            "timing_source": None,
            "job": self.job,
            "plan": self.plan,
            "checks": self.checks,
        }
        if self.sent or self.marks.get("reconciled"):
            out["hosts"] = self._where()
        if leases is not None:
            out["leases"] = public_leases(leases)
        if self.monitor is not None:
            progress = self.monitor.report()
            progress["steps"] = list(self.monitor.steps)
            progress["action"] = dict(self.monitor.action) if self.monitor.action else None
            out["progress"] = progress
        if self.outcome is not None:
            out["outcome"] = self.outcome
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def _fail(self, msg, changed=False, state=None, leases=None, err=None, cls=VirtError):
        result = self._result(changed=changed, state=state, leases=leases)
        self._timing(result)
        if err is not None:
            raise cls(msg, code=err.code, domain=err.domain, libvirt_message=err.libvirt_message, result=result)
        raise cls(msg, result=result)

    def _record(self, name, ok=True, leases=None, detail=None, host=None, **kw):
        with self._lock:
            item = self.rec.record(
                name, ok=ok, resources=[r["resource"] for r in leases or []], detail=detail, host=host, **kw
            )
            if leases is not None:
                item["leases"] = lease_summary(leases)
            return item

    def _probe(self):
        return self.view.probe(self.resources)

    def _probed(self):
        """(leases, epoch time of the probe)."""
        leases = self._probe()
        return leases, self.wall()

    def _state(self, conn, dom):
        if dom is None:
            return "absent"
        return state_name(dom)

    def _state_of(self, conn):
        """The guest's state on ``conn`` read now: a word, ``absent`` or ``unknown`` (unreadable)."""
        if conn is None:
            return "unknown"
        try:
            return self._state(conn, lookup(conn, DOMAIN, self.name))
        except Exception:
            return "unknown"

    def _where(self):
        """Which host runs what, read now."""
        out = {}
        for conn, host in ((self.src, self.src_name), (self.dest, self.dest_name)):
            if host is not None:
                out[host] = self._state_of(conn)
        return out

    def _dest_state_now(self):
        return self._state_of(self.dest)

    def _changed_now(self):
        """True unless the guest still runs on the source and the destination has no copy."""
        return not (self._state_of(self.src) == "running" and self._state_of(self.dest) == "absent")
