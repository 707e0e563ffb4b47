# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One migration's state, handed to each of its phases.

:class:`MigrationRun` is everything the phases share - the options and the :class:`Plan`, both
connections, the lock configuration and lease view, the checkpoint recorder, the lifecycle events, the
moments the threads mark (:class:`Marks`, behind a lock) - and the few things every phase does with them:
record a checkpoint, probe the leases, read a host's state, build the result, and raise a failure
carrying it. The phases (``Reconcile``, ``Preflight``, ``Transfer``, ``Handoff``) each own their part and
reach the rest only through the run they are given.
"""

from __future__ import annotations

import threading

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import PhaseRecorder, utc_now
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import VirtError, libvirt_errors
from ansible_collections.lockstep.virt.plugins.module_utils._virt.handoff_marker import clear_marker
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import Lifecycle, state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.leaseview import (
    lease_summary,
    public_leases,
    shared_check,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.timing import event_timing
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup

RECONNECT_WAIT = 15  # seconds a restarted libvirtd gets to answer again before a host's state is unknown


class Marks:
    """The moments of one run, keyed by name (``send_start``, ``prepare``, ``arrived``, ``released``, ...).

    Written by the main thread, libvirt's event thread and the handoff's resumer thread: every read and
    write goes through one lock, and :meth:`locked` holds it across several.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._items = {}

    def set(self, key, value):
        with self._lock:
            self._items[key] = value

    def get(self, key, default=None):
        with self._lock:
            return self._items.get(key, default)

    def first(self, key, value):
        """Set ``key`` unless it is set; True when this call set it."""
        with self._lock:
            if key in self._items:
                return False
            self._items[key] = value
            return True

    def __contains__(self, key):
        with self._lock:
            return key in self._items

    def locked(self):
        """``with marks.locked() as items:`` - the dict itself, for a check and a write that belong together."""
        return _Locked(self._lock, self._items)


class _Locked:
    def __init__(self, lock, items):
        self.lock, self.items = lock, items

    def __enter__(self):
        self.lock.acquire()
        return self.items

    def __exit__(self, *exc):
        self.lock.release()


class MigrationRun:
    """The state of one migration of ``params['name']``.

    Collaborators are handed in: ``open_conn(uri)`` opens a Connection, ``clock``/``sleep`` measure and
    wait. The manager fills in the rest as the run goes (``plan``, ``src``/``dest`` and their names,
    ``lock_config``, ``view``, ``recorder``, ``events``, ``resources``, ``src_state``).
    """

    def __init__(self, params, check_mode, open_conn, clock, sleep):
        self.params = params
        self.check_mode = check_mode
        self.open_conn = open_conn
        self.clock = clock
        self.sleep = sleep
        self.name = params["name"]
        self.plan = None
        self.src = self.dest = None
        self.src_name = self.dest_name = None
        self.lock_config = None
        self.dest_lock_config = None  # read by the preflight
        self.view = None
        self.recorder = None
        self.events = None
        self.marks = Marks()
        self.send_over = threading.Event()  # set by the transfer once the migration call has returned
        self.resources = []
        self.src_state = None  # the guest's state on the source when the run began (running or paused)
        self.warnings = []
        self.checks = []
        self.job = {}
        self.monitor = None  # the convergence monitor, when the plan has a ramp
        self.outcome = None
        self.reconciled = False  # a re-run acted on what an earlier run left

    # ------------------------------------------------------------------ checkpoints and leases
    def record(self, name, ok=True, leases=None, detail=None, host=None, at=None, source="api", check=None):
        if check is not None and leases:
            check += shared_check(leases, self.src_name)
        item = self.recorder.record(
            name,
            ok=ok,
            resources=[r["resource"] for r in leases or []],
            detail=detail,
            host=host,
            at=at,
            source=source,
            check=check,
        )
        if leases is not None:
            item["leases"] = lease_summary(leases)
            # the probe's own time: an event-stamped checkpoint's probe ran after the event
            item["probed_at"] = leases[0].get("probed_at") if leases else None
        return item

    def probe(self):
        at = utc_now()
        leases = self.view.probe(self.resources)
        for r in leases:
            r["probed_at"] = at
        return leases

    def probe_check(self):
        if self.lock_config.manager == "sanlock":
            return "lease probe (sanlock client status, sanlock direct dump of the lease) from {}".format(self.src_name)
        return "lease probe (F_GETLK) from {}".format(self.src_name)

    def lifecycle(self, role, phase, names, **renamed):
        """A Lifecycle on the source or destination whose checkpoints are recorded as ``phase/<name>``.

        ``names`` maps Lifecycle's step names to ours (None: not recorded); ``renamed`` adds to it.
        """
        conn, host = (self.src, None) if role == "source" else (self.dest, self.dest_name)
        return Lifecycle(
            conn,
            PhaseRecorder(self.recorder, phase, dict(names, **renamed), host=host),
            self.lock_config,
            sleep=self.sleep,
            clock=self.clock,
        )

    # ------------------------------------------------------------------ the guest on each host
    def state(self, conn, dom):
        if dom is None:
            return "absent"
        return state_name(dom)

    def active(self, dom):
        with libvirt_errors("cannot read the state of {}".format(self.name)):
            return bool(dom.isActive())

    def wait_inactive(self, conn, timeout):
        deadline = self.clock() + timeout
        while True:
            dom = lookup(conn, DOMAIN, self.name)
            if dom is None or not self.active(dom):
                return dom, True
            if self.clock() >= deadline:
                return dom, False
            self.sleep(0.2)

    def read_state(self, role, wait=None):
        """The guest's state on one host (absent, running, paused, ...), reconnecting for up to ``wait``
        seconds when the connection broke; ``unknown`` when the host does not answer."""
        deadline = self.clock() + (RECONNECT_WAIT if wait is None else wait)
        while True:
            conn = self.src if role == "source" else self.dest
            try:
                if conn is None:
                    raise VirtError("no connection")
                dom = lookup(conn, DOMAIN, self.name)
                return "absent" if dom is None else state_name(dom)
            except Exception:  # VirtError or libvirtError: the daemon went away; reconnect below
                pass
            if self.clock() >= deadline:
                return "unknown"
            self.sleep(0.5)
            try:
                fresh = self.open_conn(self.params.get("uri") if role == "source" else self.params["dest_uri"])
            except Exception:  # VirtError: not back yet
                continue
            if role == "source":
                self.src = fresh
            else:
                self.dest = fresh

    def source_runs_again(self):
        """Why a destination copy must not be resumed now (the source runs the guest again), or None."""
        try:
            dom = lookup(self.src, DOMAIN, self.name)
            if dom is not None and state_name(dom) == "running":
                return "{} runs {} again (libvirt resumed it there): the paused copy on {} is older".format(
                    self.src_name, self.name, self.dest_name
                )
        except Exception:  # the source does not answer: it cannot be shown to run the guest
            return None
        return None

    def resume_destination(self, lc, dom):
        """Resume the destination's copy through ``lc``, retrying a busy lease up to ``lock.acquire_timeout``
        while the source does not run the guest again."""
        lc.resume(
            dom,
            required=False,
            acquire_timeout=self.plan.acquire_timeout,
            verify=False,
            before_retry=self.source_runs_again,
        )

    def resolve_volume(self, pool, volume):
        try:
            return self.src.virt.storagePoolLookupByName(pool).storageVolLookupByName(volume).path()
        except Exception:
            return None

    def clear_marker(self, dom):
        try:
            clear_marker(dom)
        except Exception as exc:
            self.warnings.append("could not remove the handoff marker of {}: {}".format(self.name, exc))

    def job_stats(self):
        for conn in (self.dest, self.src):
            try:
                dom = lookup(conn, DOMAIN, self.name)
                stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED) if dom is not None else None
            except Exception:  # libvirtError, or a VirtError from the lookup: no statistics
                continue
            if stats and stats.get("time_elapsed") is not None:
                return stats
        return {}

    # ------------------------------------------------------------------ the result
    def result(self, changed=False, state=None, leases=None):
        out = {
            "changed": changed or self.reconciled,
            "name": self.name,
            "source": self.src_name,
            "dest": self.dest_name,
            "state": state,
            "lock_checkpoints": self.recorder.as_list() if self.recorder is not None else [],
            "lease_gap_ms": None,
            "downtime_ms": None,
            "timing_source": None,
            "job": self.job,
            "plan": self.plan.as_dict() if self.plan is not None else None,
            "checks": self.checks,
        }
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

    def timing(self, result):
        """downtime_ms and lease_gap_ms from events on both ends (or None); finish/resumed stamped by the
        destination's RESUMED event when it was seen."""
        result.update(event_timing(self.events, released_at=self.marks.get("released")))
        if self.events is not None and self.events.available:
            result["events"] = self.events.as_list()
        ev = self.events.first("dest", "resumed") if self.events is not None else None
        resumed = self.recorder.find("finish/resumed") if self.recorder is not None else None
        # the event is stamped as it arrives: it is the better witness only when it came before the resume call
        # returned (over a slow or tunnelled connection it can arrive after, and after the probe that followed)
        if (
            ev is not None
            and resumed is not None
            and resumed["ok"]
            and resumed["source"] != "event"
            and ev["at"] <= resumed["at"]
        ):
            resumed["at"], resumed["source"] = ev["at"], "event"
            result["lock_checkpoints"] = self.recorder.as_list()

    def failure(self, msg, changed=False, state=None, leases=None, err=None, cls=VirtError):
        """The exception that ends the run with ``msg`` and the whole result so far: ``raise run.failure(...)``."""
        result = self.result(changed=changed, state=state, leases=leases)
        self.timing(result)
        if err is not None:
            return cls(msg, code=err.code, domain=err.domain, libvirt_message=err.libvirt_message, result=result)
        return cls(msg, result=result)
