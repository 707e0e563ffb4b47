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

import time

from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import CheckpointRecorder
from ansible_collections.lockstep.virt.plugins.module_utils._virt.connection import Connection
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    ValidationError,
    VirtError,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.handoff_marker import (
    new_marker,
    owner_alive,
    read_marker,
    write_marker,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    read_host_lock_config,
    read_lock_config,
    share_users,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.convergence import describe_ramp
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.events import (
    LifecycleEvents,
    start_event_loop,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.evidence import last_stop_in_log
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.handoff import Handoff
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.leaseview import (
    LeaseView,
    describe,
    not_released,
    source_keeps,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.plan import (
    RELEASE_BEFORE_SEND,
    build_plan,
    checkpoint_order,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.preflight import Preflight
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.reconcile import Reconcile
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.run import MigrationRun
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.transfer import Transfer
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, parse_xml


def host_uuid(conn):
    with libvirt_errors("cannot read the capabilities of {}".format(conn.uri)):
        caps = parse_xml(conn.virt.getCapabilities(), "capabilities", "libvirt capabilities")
    host = elements(caps, "host")
    uuid = elements(host[0], "uuid") if host else []
    return (uuid[0].text or "").strip() if uuid else None


class MigrationManager:
    """Migrate ``params['name']`` from ``params['uri']`` to ``params['dest_uri']``.

    The run's state is one :class:`MigrationRun`, handed to each phase: :class:`Reconcile` (what an
    interrupted run left), :class:`Preflight` (the checks), :class:`Transfer` (the job) and :class:`Handoff`
    (the destination takes the leases and runs; the source is confirmed stopped). This class opens the
    connections, builds the plan and runs the phases in order.

    ``open_conn(uri)`` opens a Connection; ``lease_view(lock_config, resolve_volume, sharers)`` gives the
    LeaseView; ``events(name, clock, on_event)`` watches lifecycle events (None: no events);
    ``read_config(profile, local)`` reads the source's lock configuration and ``read_dest_config(conn)`` the
    destination's (the same reader, over SSH for a remote URI); ``source_log(name, since)`` reads what the
    source's QEMU log says happened to the guest since the handoff began; all injectable for tests, as are
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
        source_log=last_stop_in_log,
    ):
        self.params = params
        self.check_mode = check_mode
        self.lease_view_factory = lease_view
        self.events_factory = events
        self.read_config = read_config
        self.name = params["name"]
        self.run_state = MigrationRun(params, check_mode, open_conn, clock, sleep)
        self.reconcile = Reconcile(self.run_state, source_log)
        self.preflight = Preflight(
            self.run_state, read_dest_config or (lambda conn: read_host_lock_config(conn, read_config))
        )
        self.transfer = Transfer(self.run_state)
        self.handoff = Handoff(self.run_state)

    # ------------------------------------------------------------------ plumbing
    def run(self):
        run = self.run_state
        try:
            return self._run()
        finally:
            run.send_over.set()
            self.handoff.join_resumer()
            self.handoff.stop_prober()
            if run.events is not None:
                run.events.close()
            for conn in (run.dest, run.src):
                if conn is not None:
                    conn.close()

    # ------------------------------------------------------------------ run
    def _run(self):
        run = self.run_state
        if self.events_factory is not None and not start_event_loop():  # before any connection is opened
            self.events_factory = None
        run.src = run.open_conn(self.params.get("uri"))
        profile = run.src.profile
        run.plan = build_plan(self.params, profile)
        if run.plan.release == RELEASE_BEFORE_SEND:
            run.warnings.append(
                "lock.release: before_send reproduces the old ordering: the source releases its leases before the "
                "guest is sent and must take them back if the send fails, which can fail while the destination "
                "still holds them. Use it only to reproduce that failure."
            )
        run.src_name = run.src.hostname
        try:
            run.dest = run.open_conn(self.params["dest_uri"])
        except VirtError as err:
            run.dest = None
            raise ValidationError(
                "begin: cannot reach the destination {}: {}".format(
                    self.params["dest_uri"], err.libvirt_message or err.msg
                ),
                code=err.code,
                domain=err.domain,
                libvirt_message=err.libvirt_message,
                result=run.result(),
            ) from None
        run.dest_name = run.dest.hostname
        src_uuid, dest_uuid = host_uuid(run.src), host_uuid(run.dest)
        if src_uuid and src_uuid == dest_uuid:
            raise run.failure(
                "the destination {} is the source host {} (same host UUID {}): nothing to migrate".format(
                    self.params["dest_uri"], run.src_name, src_uuid
                ),
                cls=ValidationError,
            )
        run.lock_config = self.read_config(profile, local=run.src.local)
        run.view = self.lease_view_factory(
            run.lock_config,
            resolve_volume=run.resolve_volume,
            sharers=share_users(run.src.virt, exclude=self.name, paused_holds=profile.paused_guest_holds_leases),
        )
        # a lock manager that names the holder's host (sanlock) tells the destination from any other
        run.view.source_host, run.view.dest_host = run.src_name, run.dest_name
        run.recorder = CheckpointRecorder(host=run.src_name)

        src_dom = lookup(run.src, DOMAIN, self.name)
        dest_dom = lookup(run.dest, DOMAIN, self.name)
        if not self.check_mode:
            done = self.reconcile.reconcile(src_dom, dest_dom)
            if done is not None:
                return done
        src_active = src_dom is not None and run.active(src_dom)
        dest_active = dest_dom is not None and run.active(dest_dom)
        if dest_active and not src_active:
            return self._already_there(src_dom, dest_dom)
        if src_dom is None and dest_dom is not None:
            raise run.failure(
                "begin: guest {0} is not on {1}, and {2} has it {3}: nothing to migrate; it runs nowhere - start "
                "it on {2}".format(self.name, run.src_name, run.dest_name, state_name(dest_dom)),
                state=state_name(dest_dom),
                cls=ValidationError,
            )
        if src_dom is None:
            raise run.failure(
                "guest {} not found on {} (nor running on {})".format(self.name, run.src_name, run.dest_name),
                cls=ValidationError,
            )
        if not src_active:
            raise run.failure(
                "guest {} is not running on {} (state {}); only running or paused guests are migrated".format(
                    self.name, run.src_name, state_name(src_dom)
                ),
                cls=ValidationError,
            )
        if dest_active:
            raise run.failure(
                "begin: guest {} runs on both {} and {}: refusing to touch it".format(
                    self.name, run.src_name, run.dest_name
                )
            )
        if not self.check_mode:
            self.reconcile.guard_busy(src_dom, None)

        with libvirt_errors("cannot read the XML of {}".format(self.name)):
            xml = src_dom.XMLDesc(0)
        run.resources = run.view.expected(xml)
        run.src_state = state_name(src_dom)
        if run.plan.convergence is not None:
            self.preflight.convergence_ramp(src_dom, xml)
        leases = run.probe()
        self.preflight.check(xml, dest_dom, leases)
        self.preflight.check_snapshots(src_dom)
        failed = [c for c in run.checks if not c["ok"]]
        if failed:
            raise run.failure(
                "{}begin: migration of {} from {} to {} would fail: {}".format(
                    "check mode: " if self.check_mode else "",
                    self.name,
                    run.src_name,
                    run.dest_name,
                    "; ".join("{}: {}".format(c["name"], c["detail"]) for c in failed),
                ),
                leases=leases,
                state=run.state(run.dest, dest_dom),
            )
        if self.check_mode:
            result = run.result(changed=True, state="paused" if run.src_state == "paused" else "running", leases=leases)
            result["would"] = "migrate {} from {} to {} with flags {}; checkpoints {}".format(
                self.name,
                run.src_name,
                run.dest_name,
                "|".join(run.plan.flags),
                ", ".join(checkpoint_order(run.plan.release, run.plan.handoff, run.plan.driver)),
            )
            if run.plan.convergence_plan:
                result["would"] += "; convergence: " + describe_ramp(run.plan.convergence_plan)
            return result
        return self._migrate(src_dom, leases)

    # ------------------------------------------------------------------ idempotence
    def _already_there(self, src_dom, dest_dom):
        run = self.run_state
        with libvirt_errors("cannot read the XML of {}".format(self.name)):
            xml = dest_dom.XMLDesc(0)
        run.resources = run.view.expected(xml)
        leases = run.probe()
        state = state_name(dest_dom)
        run.record(
            "begin/inquire",
            leases=leases,
            host=run.src_name,
            source="probe",
            check="domain states read on both hosts; " + run.probe_check(),
            detail="{} already runs on {} ({}) and not on {}: nothing to do".format(
                self.name, run.dest_name, state, run.src_name
            ),
        )
        if state != "running":
            run.warnings.append(
                "{} is {} on {}, not by an unfinished handoff of this module (it carries no handoff marker): "
                "left as it is".format(self.name, state, run.dest_name)
            )
        if src_dom is not None:
            run.warnings.append("a shut-off definition of {} remains on {}".format(self.name, run.src_name))
        return run.result(changed=False, state=state, leases=leases)

    # ------------------------------------------------------------------ migration
    def _mark(self, src_dom):
        """Write the handoff marker into the guest, unless another live run owns it."""
        run = self.run_state
        current = read_marker(src_dom)
        if current and owner_alive(current, run.src.hostname):
            raise run.failure(
                "begin: another run (pid {}) is migrating {} right now; nothing was changed".format(
                    current["pid"], self.name
                )
            )
        try:
            write_marker(
                src_dom,
                new_marker(
                    run.src_name,
                    run.dest_name,
                    run.src_state,
                    run.src.hostname,
                    persist="PERSIST_DEST" in run.plan.flags,
                ),
            )
        except Exception as exc:  # libvirtError: the migration can go on, a re-run just knows less
            run.warnings.append("could not write the handoff marker into {}: {}".format(self.name, exc))

    def _migrate(self, src_dom, leases):
        run = self.run_state
        plan = run.plan
        held = [r for r in leases if source_keeps(r)]
        run.record(
            "begin/inquire",
            leases=leases,
            ok=not plan.verify or run.src_state != "running" or len(held) == len(leases),
            source="probe",
            check=run.probe_check() if run.lock_config.probeable else None,
            detail="{} {} on {}; {}; flags {}".format(
                self.name,
                run.src_state,
                run.src_name,
                describe(leases, run.src_name, run.dest_name),
                "|".join(plan.flags),
            ),
        )
        self._mark(src_dom)
        if self.events_factory is not None:
            self.handoff.start_prober()  # the event probes run there, never in libvirt's event thread
            run.events = self.events_factory(self.name, clock=run.clock, on_event=self.handoff.on_event)
            run.events.watch(run.src, "source")
            run.events.watch(run.dest, "dest")
        if plan.release == RELEASE_BEFORE_SEND:
            lc = run.lifecycle("source", "perform", {"paused": "source_paused", "leases_released": None})
            if run.src_state == "running":
                lc.suspend(src_dom)
            run.marks.set("released", run.clock())
            leases = run.probe()
            held = [r for r in leases if not_released(r)]
            run.record(
                "perform/source_released",
                ok=not held,
                leases=leases,
                source="probe",
                check=run.probe_check(),
                detail="released before the send (old ordering): " + describe(leases, run.src_name, run.dest_name),
            )
        self.handoff.start_resumer()
        try:
            self.transfer.send(src_dom)
        except VirtError as err:
            run.send_over.set()
            self.handoff.join_resumer()
            self.handoff.drain_probes()
            if self.handoff.resumed_dom is not None:
                # libvirt failed after the guest had arrived and been resumed: it runs on the destination
                return self.handoff.complete(src_dom, send_error=err)
            try:
                if "postcopy" in run.marks:
                    return self.transfer.postcopy_failed(err)
                return self.transfer.send_failed(src_dom, err)
            except VirtError as after:
                if after.result:
                    raise
                # the checks after a failed send broke too (a restarted libvirtd): say what is known
                after.msg = "perform: sending {} failed{} ({}), then: {}".format(
                    self.name,
                    " after the switch to post-copy" if "postcopy" in run.marks else "",
                    err.msg,
                    after.msg,
                )
                self.handoff.fail_after_send(after, phase="perform", changed="prepare" in run.marks)
        run.send_over.set()
        if run.monitor is not None:
            run.outcome = run.monitor.outcome(True)
        return self.handoff.complete(src_dom)
