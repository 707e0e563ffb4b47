# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Transfer: the migration job itself, its convergence control, and what a failed send leaves.

The job runs in a worker thread (``migrateToURI3`` for peer-to-peer and tunnelled, ``migrate3`` for
direct) while this thread enforces ``timeout``, the post-copy switch and the convergence monitor's
decisions. A failed send is then checked on both hosts: the guest must be running on the source with its
leases and gone from the destination (part of the migration manager).
"""

from __future__ import annotations

import threading

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.convergence import ConvergenceMonitor
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    LeaseError,
    VirtError,
    from_libvirt_error,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.leaseview import (
    blocks_dest,
    describe,
    source_holds,
    source_keeps,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.plan import RELEASE_BEFORE_SEND
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup

DEST_CLEANUP_TIMEOUT = 20  # seconds the destination gets to remove a half-received guest
STATS_EVERY = 0.25  # seconds between job statistics reads when convergence is controlled


class Transfer:
    """The send and its failure paths; mixed into MigrationManager."""

    def _send(self, src_dom):
        plan = self.plan
        if plan["max_downtime"]:
            with libvirt_errors("cannot set the maximum downtime of {}".format(self.name)):
                src_dom.migrateSetMaxDowntime(plan["max_downtime"], 0)
        if plan.get("convergence_plan"):
            self.monitor = ConvergenceMonitor(plan["convergence_plan"])
            # the first step of the ramp is in force before the job starts
            self._carry_out(src_dom, self.monitor.observe(0.0, {}), 0.0)
        outcome = {}

        def work():
            try:
                if plan["api"] == "migrate3":
                    outcome["dom"] = src_dom.migrate3(self.dest.virt, dict(plan["params"]), plan["flags_value"])
                else:
                    src_dom.migrateToURI3(self.params["dest_uri"], dict(plan["params"]), plan["flags_value"])
                outcome["ok"] = True
            except Exception as exc:  # libvirtError
                outcome["error"] = exc

        started = self.marks["send_start"] = self.clock()
        worker = threading.Thread(target=work, name="migrate", daemon=True)
        worker.start()
        aborted = switched = False
        stats_at = None
        while worker.is_alive():
            worker.join(0.1)
            elapsed = self.clock() - started
            if plan["timeout"] and elapsed > plan["timeout"] and not aborted and worker.is_alive():
                aborted = True
                try:
                    src_dom.abortJob()
                except Exception as exc:
                    self.warnings.append("could not abort the migration job after {}s: {}".format(plan["timeout"], exc))
            if plan["postcopy_after"] and elapsed > plan["postcopy_after"] and not switched and worker.is_alive():
                switched = True
                self._start_postcopy(src_dom, "after {}s (postcopy)".format(plan["postcopy_after"]))
            if (
                self.monitor is not None
                and worker.is_alive()
                and (stats_at is None or elapsed - stats_at >= STATS_EVERY)
            ):
                stats_at = elapsed
                try:
                    stats = src_dom.jobStats(0)
                except Exception:
                    stats = {}
                self._carry_out(src_dom, self.monitor.observe(elapsed, stats), elapsed)
        self.marks["send_end"] = self.clock()
        self._send_over.set()
        if "error" in outcome:
            exc = outcome["error"]
            if libvirt is not None and isinstance(exc, libvirt.libvirtError):
                err = from_libvirt_error(exc)
            else:
                err = VirtError(str(exc))
            if aborted:
                err.msg = "aborted after the {}s timeout: {}".format(plan["timeout"], err.msg)
            action = self.monitor.action if self.monitor is not None else None
            if action and action["do"] == "abort" and not action.get("failed") and not aborted:
                err.msg = "aborted ({}): {}".format(action["detail"], err.msg)
            if self.monitor is not None:
                self.outcome = self.monitor.outcome(False, aborted_by_timeout=aborted)
            raise err

    def _carry_out(self, src_dom, decisions, elapsed):
        """Apply the convergence monitor's decisions to the source's migration job."""
        for d in decisions:
            try:
                if d["do"] == "downtime":
                    src_dom.migrateSetMaxDowntime(d["downtime_ms"], 0)
                elif d["do"] == "abort":
                    src_dom.abortJob()
                elif d["do"] == "postcopy":
                    self._start_postcopy(src_dom, "convergence: " + d["detail"], raise_error=True)
                elif d["do"] == "pause":
                    self._pause_to_complete(src_dom, d)
            except Exception as exc:
                if d["do"] == "downtime":
                    self.warnings.append(
                        "could not raise the allowed downtime to {} ms at {:.1f}s: {}".format(
                            d["downtime_ms"], elapsed, exc
                        )
                    )
                else:
                    self.monitor.action_failed(exc)
                    self.warnings.append("convergence: could not {} the migration job: {}".format(d["do"], exc))

    def _start_postcopy(self, src_dom, why, raise_error=False):
        try:
            src_dom.migrateStartPostCopy(0)
        except Exception as exc:
            if raise_error:
                raise
            self.warnings.append("could not switch to post-copy: {}".format(exc))
            return
        self.marks["postcopy"] = self.clock()
        leases = self._probe()
        self._record(
            "perform/postcopy_switch",
            leases=leases,
            detail="switching to post-copy ({}): {} stops on {} and releases its leases, {} resumes it and takes "
            "them; from here a failure cannot be undone".format(why, self.name, self.src_name, self.dest_name),
        )

    def _pause_to_complete(self, src_dom, decision):
        src_dom.suspend()
        self.marks["forced_pause"] = self.clock()
        leases = self._probe()
        held = [r for r in leases if source_holds(r)]
        self._record(
            "perform/paused_to_complete",
            ok=not held or self.src.profile.paused_guest_holds_leases,
            leases=leases,
            detail="convergence: {}; {} paused on {} so that the copy completes ({})".format(
                decision["detail"], self.name, self.src_name, describe(leases, self.src_name, self.dest_name)
            ),
        )

    def _postcopy_failed(self, err):
        """The job failed after the switch to post-copy: nothing can be taken back."""
        if self.monitor is not None:
            self.outcome = "postcopy_failed"
        leases = self._probe()
        where = []
        paused_now = []
        for conn, host in ((self.src, self.src_name), (self.dest, self.dest_name)):
            dom = lookup(conn, DOMAIN, self.name)
            state = self._state(conn, dom)
            if state == "running":
                # running nowhere: a copy whose memory is partly on the other host must not run on
                try:
                    dom.suspend()
                    paused_now.append(host)
                    state = state_name(dom)
                except Exception:
                    pass
            where.append("{}: {}".format(host, state))
        self._record(
            "perform/postcopy_failed",
            ok=False,
            leases=leases,
            detail="{}; {}".format(", ".join(where), describe(leases, self.src_name, self.dest_name)),
        )
        dest_dom = lookup(self.dest, DOMAIN, self.name)
        msg = (
            "perform: the migration of {0} failed after the switch to post-copy: {1}. This cannot be undone: the "
            "guest's memory is split between {2} and {3}, neither copy can run alone. {0} is left where libvirt "
            "left it ({4}){5} and runs nowhere; leases: {6}. Recover it with a post-copy resume "
            "(virsh migrate --postcopy-resume) once {3} is reachable again, or destroy both copies and start it "
            "again from its disks.".format(
                self.name,
                err.msg,
                self.src_name,
                self.dest_name,
                "; ".join(where),
                " (paused by the module on {})".format(", ".join(paused_now)) if paused_now else "",
                describe(leases, self.src_name, self.dest_name),
            )
        )
        self._fail(msg, changed=True, state=self._state(self.dest, dest_dom), leases=leases, err=err)

    def _wait_inactive(self, conn, timeout):
        deadline = self.clock() + timeout
        while True:
            dom = lookup(conn, DOMAIN, self.name)
            if dom is None or not self._active(dom):
                return dom, True
            if self.clock() >= deadline:
                return dom, False
            self.sleep(0.2)

    def _send_failed(self, src_dom, err):
        plan = self.plan
        self._record("perform/send", ok=False, leases=self._probe(), detail=err.msg)
        self._clear_source_marker(src_dom)
        before_send = plan["release"] == RELEASE_BEFORE_SEND
        reacquire_error = None
        forced_pause = "forced_pause" in self.marks
        # QEMU restarts the vCPUs itself when a job is cancelled after it stopped them for the final
        # copy, and libvirt then marks the guest running without taking its leases back: a guest
        # running unleased on the source, which the module pauses and resumes through libvirt to
        # take them again.
        resumed_unleased = (
            not (before_send or forced_pause)
            and self.src_state == "running"
            and self.lock_config.enabled
            and state_name(src_dom) == "running"
            and any(not source_keeps(r) for r in self._probe())
        )
        if resumed_unleased:
            self._record(
                "confirm/source_resumed_unleased",
                ok=False,
                leases=self._probe(),
                detail="QEMU resumed {} on {} after the cancelled send; libvirt took no lease back".format(
                    self.name, self.src_name
                ),
            )
        # libvirt may also leave the source paused: its vCPUs stopped for the final copy and the job failed
        # after that (the destination's libvirtd gone, a lease taken in the gap); it runs nowhere then
        left_paused = (
            not (before_send or forced_pause or resumed_unleased)
            and self.src_state == "running"
            and state_name(src_dom) == "paused"
        )
        if left_paused:
            self._record(
                "confirm/source_left_paused",
                ok=False,
                leases=self._probe(),
                source="probe",
                check="domain state read on {}".format(self.src_name),
                detail="libvirt left {} paused on {} after the failed send".format(self.name, self.src_name),
            )
        if (before_send or forced_pause or resumed_unleased or left_paused) and self.src_state == "running":
            lc = self._lifecycle(
                "source",
                "confirm",
                {
                    "paused": "source_paused",
                    "resumed": "source_reacquired",
                    "acquire_failed": "source_reacquire_busy",
                    "resume_failed": "source_reacquire_failed",
                    "running": None,
                    "lease_files_created": None,
                },
            )
            try:
                if resumed_unleased:
                    lc.suspend(src_dom)
                lc.resume(src_dom, required=False, acquire_timeout=plan["acquire_timeout"], verify=False)
            except VirtError as exc:
                reacquire_error = exc
        # the destination: no domain left running, no lease held there
        unreachable = None
        try:
            dest_dom, gone = self._wait_inactive(self.dest, DEST_CLEANUP_TIMEOUT)
        except VirtError as exc:
            # its libvirtd is gone (crashed, or the link to it broke): its copy cannot be seen, but the
            # shared lockspace still shows whether anything there holds a lease
            dest_dom, gone, unreachable = None, True, exc.msg
        leases = self._probe()
        other = [r for r in leases if blocks_dest(r)]
        dest_ok = gone and not other
        if unreachable:
            dest_seen = "a libvirtd that cannot be reached ({}), so no copy that can run".format(unreachable)
        else:
            dest_seen = "no running copy" if gone else "a copy still running"
        self._record(
            "finish/dest_clean",
            ok=dest_ok,
            leases=leases,
            host=self.dest_name,
            source="probe",
            check="domain lookup on {}; {}".format(self.dest_name, self._probe_check()),
            detail="{} has {}; {}".format(self.dest_name, dest_seen, describe(leases, self.src_name, self.dest_name)),
        )
        src_state = state_name(src_dom)
        held_src = [r for r in leases if source_keeps(r)]
        kept = src_state == "running" and len(held_src) == len(leases)
        if not before_send:
            self._record(
                "confirm/source_kept",
                ok=kept,
                leases=leases,
                source="probe",
                check="domain state read on {}; {}".format(self.src_name, self._probe_check()),
                detail="{} is {} on {}".format(self.name, src_state, self.src_name),
            )
        if reacquire_error is not None:
            self._fail(
                "perform: sending {0} to {1} failed ({2}); confirm: {3} could not take its leases back "
                "({6}): {4}. {0} is {5} on {3} and runs nowhere.".format(
                    self.name,
                    self.dest_name,
                    err.msg,
                    self.src_name,
                    describe([r for r in leases if not source_keeps(r)] or leases, self.src_name, self.dest_name),
                    src_state,
                    "lock.release: before_send, the old ordering"
                    if before_send
                    else "it was paused on {} so that the copy would complete".format(self.src_name)
                    if forced_pause
                    else "libvirt left it paused after the failed send"
                    if left_paused
                    else "QEMU had stopped it for the final copy and resumed it unleased when the send was cancelled",
                ),
                state=self._state(self.dest, dest_dom),
                leases=leases,
                err=reacquire_error,
                cls=LeaseError,
            )
        msg = "perform: sending {} from {} to {} failed: {}. ".format(self.name, self.src_name, self.dest_name, err.msg)
        if kept:
            msg += "{} keeps running on {} holding its leases (verified{}); ".format(
                self.name,
                self.src_name,
                ", taken back after QEMU resumed it unleased"
                if resumed_unleased
                else ", resumed after libvirt left it paused"
                if left_paused
                else "",
            )
        else:
            msg += "{} is {} on {}{}: {}; ".format(
                self.name,
                src_state,
                self.src_name,
                "" if src_state == "running" else " and runs nowhere (run the task again once it can run)",
                describe(leases, self.src_name, self.dest_name),
            )
        if unreachable and dest_ok:
            msg += "{}'s libvirtd cannot be reached ({}); it holds no lease (verified)".format(
                self.dest_name, unreachable
            )
        elif dest_ok:
            msg += "{} has no copy of it and holds no lease (verified)".format(self.dest_name)
        else:
            msg += "{} did not clean up within {}s".format(self.dest_name, DEST_CLEANUP_TIMEOUT)
        state = "unknown" if unreachable else self._state(self.dest, dest_dom)
        self._fail(msg, state=state, leases=leases, err=err)

    def _clear_source_marker(self, src_dom):
        """The send failed and the guest runs here: its handoff marker goes (a guest left paused keeps it, so
        that a re-run resumes it)."""
        try:
            if state_name(src_dom) == "running":
                self._clear_marker(src_dom)
        except Exception:  # libvirtError: the source's libvirtd is gone; a re-run reads the marker then
            pass
