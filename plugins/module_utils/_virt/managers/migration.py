# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration manager: a live migration whose lease handoff is explicit, verified and recorded.

The manager holds a migration's state (both connections, the plan, the lease view, the checkpoint
recorder, the lifecycle events) and runs its phases, each in its own module under ``_virt/migration``:
reconcile (what an interrupted run left), preflight (checks), transfer (the job), handoff (the destination
takes the leases and runs, the source is confirmed stopped). Successful run with QEMU, ordered by ``at``::

    begin/inquire           source: guest running, its leases held by the source's virtlockd (probe)
    prepare/register        destination: incoming guest created paused, holding no lease (event, probe)
    perform/source_released the source's vCPUs stopped for the final copy; libvirt released its leases
                            then (event), and the probe saw none held by the source's virtlockd
    perform/send            the destination holds the whole guest, paused (event, state read)
    finish/resumed          the destination was resumed, its lock manager took the leases (event)
    finish/dest_acquired    the leases are held, and not by the source's virtlockd (probe)
    confirm/source_stopped  libvirt stopped the source (event, lookup)

It never calls exit_json/fail_json: :meth:`MigrationManager.run` returns the result or raises VirtError
carrying the whole result (``changed``, ``state``, every checkpoint so far).
"""

from __future__ import annotations

import threading
import time

from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import (
    CheckpointRecorder,
    PhaseRecorder,
    utc_now,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.connection import Connection
from ansible_collections.lockstep.virt.plugins.module_utils._virt.convergence import describe_plan
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    ValidationError,
    VirtError,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    read_host_lock_config,
    read_lock_config,
    share_users,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import Lifecycle, state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.events import (
    LifecycleEvents,
    start_event_loop,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.handoff import Handoff
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.leaseview import (
    LeaseView,
    describe,
    lease_summary,
    public_leases,
    shared_check,
    source_holds,
    source_keeps,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.marker import (
    new_marker,
    owner_alive,
    read_marker,
    write_marker,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.plan import (
    RELEASE_BEFORE_SEND,
    build_plan,
    checkpoint_order,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.preflight import Preflight
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.reconcile import Reconcile
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.transfer import Transfer
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, parse_xml


def host_uuid(conn):
    with libvirt_errors("cannot read the capabilities of {}".format(conn.uri)):
        caps = parse_xml(conn.virt.getCapabilities(), "capabilities", "libvirt capabilities")
    host = elements(caps, "host")
    uuid = elements(host[0], "uuid") if host else []
    return (uuid[0].text or "").strip() if uuid else None


class MigrationManager(Reconcile, Preflight, Transfer, Handoff):
    """Migrate ``params['name']`` from ``params['uri']`` to ``params['dest_uri']``.

    ``open_conn(uri)`` opens a Connection; ``lease_view(lock_config, resolve_volume, sharers)`` gives the
    LeaseView; ``events(name, clock, on_event)`` watches lifecycle events (None: no events);
    ``read_config(profile, local)`` reads the source's lock configuration and ``read_dest_config(conn)`` the
    destination's (the same reader, over SSH for a remote URI); all injectable for tests, as are
    ``sleep``/``clock``.
    """

    def __init__(
        self,
        params,
        check_mode=False,
        open_conn=Connection,
        lease_view=LeaseView,
        events=LifecycleEvents,
        sleep=time.sleep,
        clock=time.monotonic,
        read_config=read_lock_config,
        read_dest_config=None,
    ):
        self.params = params
        self.check_mode = check_mode
        self.open_conn = open_conn
        self.lease_view_factory = lease_view
        self.events_factory = events
        self.sleep = sleep
        self.clock = clock
        self.read_config = read_config
        self.read_dest_config = read_dest_config or (lambda conn: read_host_lock_config(conn, read_config))
        self.dest_lock_config = None
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
        self.monitor = None
        self.outcome = None
        self.reconciled = False
        self._init_handoff()

    # ------------------------------------------------------------------ plumbing
    def run(self):
        try:
            return self._run()
        finally:
            self._send_over.set()
            self._join_resumer()
            self._stop_prober()
            if self.events is not None:
                self.events.close()
            for conn in (self.dest, self.src):
                if conn is not None:
                    conn.close()

    def _result(self, changed=False, state=None, leases=None):
        out = {
            "changed": changed or self.reconciled,
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

    def _record(self, name, ok=True, leases=None, detail=None, host=None, at=None, source="api", check=None):
        if check is not None and leases:
            check += shared_check(leases, self.src_name)
        item = self.rec.record(
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

    def _probe(self):
        at = utc_now()
        leases = self.view.probe(self.resources)
        for r in leases:
            r["probed_at"] = at
        return leases

    def _lifecycle(self, role, phase, names, **renamed):
        """A Lifecycle on the source or destination whose checkpoints are recorded as ``phase/<name>``.

        ``names`` maps Lifecycle's step names to ours (None: not recorded); ``renamed`` adds to it.
        """
        conn, host = (self.src, None) if role == "source" else (self.dest, self.dest_name)
        return Lifecycle(
            conn,
            PhaseRecorder(self.rec, phase, dict(names, **renamed), host=host),
            self.lock_config,
            sleep=self.sleep,
            clock=self.clock,
        )

    def _state(self, conn, dom):
        if dom is None:
            return "absent"
        return state_name(dom)

    def _active(self, dom):
        with libvirt_errors("cannot read the state of {}".format(self.name)):
            return bool(dom.isActive())

    # ------------------------------------------------------------------ run
    def _run(self):
        if self.events_factory is not None and not start_event_loop():  # before any connection is opened
            self.events_factory = None
        self.src = self.open_conn(self.params.get("uri"))
        profile = self.src.profile
        self.plan = build_plan(self.params, profile)
        if self.plan["release"] == RELEASE_BEFORE_SEND:
            self.warnings.append(
                "lock.release: before_send reproduces the old ordering: the source releases its leases before the "
                "guest is sent and must take them back if the send fails, which can fail while the destination "
                "still holds them. Use it only to reproduce that failure."
            )
        self.src_name = self.src.hostname
        try:
            self.dest = self.open_conn(self.params["dest_uri"])
        except VirtError as err:
            self.dest = None
            raise ValidationError(
                "begin: cannot reach the destination {}: {}".format(
                    self.params["dest_uri"], err.libvirt_message or err.msg
                ),
                code=err.code,
                domain=err.domain,
                libvirt_message=err.libvirt_message,
                result=self._result(),
            ) from None
        self.dest_name = self.dest.hostname
        src_uuid, dest_uuid = host_uuid(self.src), host_uuid(self.dest)
        if src_uuid and src_uuid == dest_uuid:
            self._fail(
                "the destination {} is the source host {} (same host UUID {}): nothing to migrate".format(
                    self.params["dest_uri"], self.src_name, src_uuid
                ),
                cls=ValidationError,
            )
        self.lock_config = self.read_config(profile, local=self.src.local)
        self.view = self.lease_view_factory(
            self.lock_config,
            resolve_volume=self._resolve_volume,
            sharers=share_users(self.src.virt, exclude=self.name, paused_holds=profile.paused_guest_holds_leases),
        )
        self.rec = CheckpointRecorder(host=self.src_name)

        src_dom = lookup(self.src, DOMAIN, self.name)
        dest_dom = lookup(self.dest, DOMAIN, self.name)
        if not self.check_mode:
            done = self._reconcile(src_dom, dest_dom)
            if done is not None:
                return done
        src_active = src_dom is not None and self._active(src_dom)
        dest_active = dest_dom is not None and self._active(dest_dom)
        if dest_active and not src_active:
            return self._already_there(src_dom, dest_dom)
        if src_dom is None and dest_dom is not None:
            self._fail(
                "begin: guest {0} is not on {1}, and {2} has it {3}: nothing to migrate; it runs nowhere - start "
                "it on {2}".format(self.name, self.src_name, self.dest_name, state_name(dest_dom)),
                state=state_name(dest_dom),
                cls=ValidationError,
            )
        if src_dom is None:
            self._fail(
                "guest {} not found on {} (nor running on {})".format(self.name, self.src_name, self.dest_name),
                cls=ValidationError,
            )
        if not src_active:
            self._fail(
                "guest {} is not running on {} (state {}); only running or paused guests are migrated".format(
                    self.name, self.src_name, state_name(src_dom)
                ),
                cls=ValidationError,
            )
        if dest_active:
            self._fail(
                "begin: guest {} runs on both {} and {}: refusing to touch it".format(
                    self.name, self.src_name, self.dest_name
                )
            )
        if not self.check_mode:
            self._guard_busy(src_dom, None)

        with libvirt_errors("cannot read the XML of {}".format(self.name)):
            xml = src_dom.XMLDesc(0)
        self.resources = self.view.expected(xml)
        self.src_state = state_name(src_dom)
        if self.plan.get("convergence") is not None:
            self._plan_convergence(src_dom, xml)
        leases = self._probe()
        self._checks(xml, dest_dom, leases)
        self._check_snapshots(src_dom)
        failed = [c for c in self.checks if not c["ok"]]
        if failed:
            self._fail(
                "{}begin: migration of {} from {} to {} would fail: {}".format(
                    "check mode: " if self.check_mode else "",
                    self.name,
                    self.src_name,
                    self.dest_name,
                    "; ".join("{}: {}".format(c["name"], c["detail"]) for c in failed),
                ),
                leases=leases,
                state=self._state(self.dest, dest_dom),
            )
        if self.check_mode:
            result = self._result(
                changed=True, state="paused" if self.src_state == "paused" else "running", leases=leases
            )
            result["would"] = "migrate {} from {} to {} with flags {}; checkpoints {}".format(
                self.name,
                self.src_name,
                self.dest_name,
                "|".join(self.plan["flags"]),
                ", ".join(checkpoint_order(self.plan["release"], self.plan["handoff"], self.plan["driver"])),
            )
            if self.plan.get("convergence_plan"):
                result["would"] += "; convergence: " + describe_plan(self.plan["convergence_plan"])
            return result
        return self._migrate(src_dom, leases)

    # ------------------------------------------------------------------ idempotence
    def _already_there(self, src_dom, dest_dom):
        with libvirt_errors("cannot read the XML of {}".format(self.name)):
            xml = dest_dom.XMLDesc(0)
        self.resources = self.view.expected(xml)
        leases = self._probe()
        state = state_name(dest_dom)
        self._record(
            "begin/inquire",
            leases=leases,
            host=self.src_name,
            source="probe",
            check="domain states read on both hosts; " + self._probe_check(),
            detail="{} already runs on {} ({}) and not on {}: nothing to do".format(
                self.name, self.dest_name, state, self.src_name
            ),
        )
        if state != "running":
            self.warnings.append(
                "{} is {} on {}, not by an unfinished handoff of this module (it carries no handoff marker): "
                "left as it is".format(self.name, state, self.dest_name)
            )
        if src_dom is not None:
            self.warnings.append("a shut-off definition of {} remains on {}".format(self.name, self.src_name))
        return self._result(changed=False, state=state, leases=leases)

    # ------------------------------------------------------------------ migration
    def _mark(self, src_dom):
        """Write the handoff marker into the guest, unless another live run owns it."""
        current = read_marker(src_dom)
        if current and owner_alive(current, self.src.hostname):
            self._fail(
                "begin: another run (pid {}) is migrating {} right now; nothing was changed".format(
                    current["pid"], self.name
                )
            )
        try:
            write_marker(src_dom, new_marker(self.src_name, self.dest_name, self.src_state, self.src.hostname))
        except Exception as exc:  # libvirtError: the migration can go on, a re-run just knows less
            self.warnings.append("could not write the handoff marker into {}: {}".format(self.name, exc))

    def _migrate(self, src_dom, leases):
        plan = self.plan
        held = [r for r in leases if source_keeps(r)]
        self._record(
            "begin/inquire",
            leases=leases,
            ok=not plan["verify"] or self.src_state != "running" or len(held) == len(leases),
            source="probe",
            check=self._probe_check() if self.lock_config.probeable else None,
            detail="{} {} on {}; {}; flags {}".format(
                self.name,
                self.src_state,
                self.src_name,
                describe(leases, self.src_name, self.dest_name),
                "|".join(plan["flags"]),
            ),
        )
        self._mark(src_dom)
        if self.events_factory is not None:
            self._start_prober()  # the event probes run there, never in libvirt's event thread
            self.events = self.events_factory(self.name, clock=self.clock, on_event=self._on_event)
            self.events.watch(self.src, "source")
            self.events.watch(self.dest, "dest")
        if plan["release"] == RELEASE_BEFORE_SEND:
            lc = self._lifecycle("source", "perform", {"paused": "source_paused", "leases_released": None})
            if self.src_state == "running":
                lc.suspend(src_dom)
            self.marks["released"] = self.clock()
            leases = self._probe()
            held = [r for r in leases if source_holds(r)]
            self._record(
                "perform/source_released",
                ok=not held,
                leases=leases,
                source="probe",
                check=self._probe_check(),
                detail="released before the send (old ordering): " + describe(leases, self.src_name, self.dest_name),
            )
        self._start_resumer()
        try:
            self._send(src_dom)
        except VirtError as err:
            self._send_over.set()
            self._join_resumer()
            self._drain_probes()
            if self._resumed_dom is not None:
                # libvirt failed after the guest had arrived and been resumed: it runs on the destination
                return self._handoff(src_dom, send_error=err)
            try:
                if "postcopy" in self.marks:
                    return self._postcopy_failed(err)
                return self._send_failed(src_dom, err)
            except VirtError as after:
                if after.result:
                    raise
                # the checks after a failed send broke too (a restarted libvirtd): say what is known
                after.msg = "perform: sending {} failed ({}), then: {}".format(self.name, err.msg, after.msg)
                self._fail_after_send(after, phase="perform", changed="prepare" in self.marks)
        self._send_over.set()
        if self.monitor is not None:
            self.outcome = self.monitor.outcome(True)
        return self._handoff(src_dom)
