# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Transfer: the migration job itself, its convergence control, and what a failed send leaves.

The job runs in a worker thread (``migrateToURI3`` for peer-to-peer and tunnelled, ``migrate3`` for
direct) while this thread enforces ``timeout``, the post-copy switch and the convergence monitor's
decisions. A failed send is then checked on both hosts: the guest must be running on the source with its
leases and gone from the destination.
"""

from __future__ import annotations

import enum
import threading

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    LeaseError,
    VirtError,
    from_libvirt_error,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.convergence import ConvergenceMonitor
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.evidence import reason_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.leaseview import (
    blocks_dest,
    describe,
    held_elsewhere,
    not_released,
    source_keeps,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.plan import RELEASE_BEFORE_SEND
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup

DEST_CLEANUP_TIMEOUT = 20  # seconds the destination gets to remove a half-received guest
STATS_EVERY = 0.25  # seconds between job statistics reads when convergence is controlled


class SendFailure(enum.Enum):
    """Where a failed send left the guest on the source, classified once after the call returned; the module
    takes the leases back for every outcome but KEPT and NOT_RUNNING."""

    KEPT = "kept"  # libvirt kept it running on the source, with its leases
    NOT_RUNNING = "not_running"  # it was paused before the migration: nothing to take back
    RELEASED_BEFORE_SEND = "released_before_send"  # lock.release: before_send paused it and released first
    PAUSED_TO_COMPLETE = "paused_to_complete"  # the convergence monitor paused it so that the copy completes
    RESUMED_UNLEASED = "resumed_unleased"  # QEMU restarted its vCPUs after a cancelled final copy, unleased
    LEFT_PAUSED = "left_paused"  # libvirt left it paused after the failed send

    @property
    def takes_leases_back(self):
        return self not in (SendFailure.KEPT, SendFailure.NOT_RUNNING)

    @property
    def why_paused(self):
        return _WHY_PAUSED.get(self, "")

    @property
    def kept_note(self):
        return _KEPT_NOTE.get(self, "")


_WHY_PAUSED = {
    SendFailure.RELEASED_BEFORE_SEND: "lock.release: before_send, the old ordering",
    SendFailure.PAUSED_TO_COMPLETE: "it was paused on {src} so that the copy would complete",
    SendFailure.LEFT_PAUSED: "libvirt left it paused after the failed send",
    SendFailure.RESUMED_UNLEASED: "QEMU had stopped it for the final copy and resumed it unleased when the send "
    "was cancelled",
}
_KEPT_NOTE = {
    SendFailure.RESUMED_UNLEASED: ", taken back after QEMU resumed it unleased",
    SendFailure.LEFT_PAUSED: ", resumed after libvirt left it paused",
}


def classify_failed_send(plan, was, forced_pause, lock_enabled, state_now, leases):
    """The SendFailure of a send that failed for a guest that was ``was`` (running or paused) when the run
    began and is ``state_now`` on the source, holding ``leases`` (probed) there."""
    if was != "running":
        return SendFailure.NOT_RUNNING
    if plan.release == RELEASE_BEFORE_SEND:
        return SendFailure.RELEASED_BEFORE_SEND
    if forced_pause:
        return SendFailure.PAUSED_TO_COMPLETE
    # QEMU restarts the vCPUs itself when a job is cancelled after it stopped them for the final copy, and
    # libvirt then marks the guest running without taking its leases back: the module pauses and resumes it
    # through libvirt to take them again
    if state_now == "running" and lock_enabled and any(not source_keeps(r) for r in leases):
        return SendFailure.RESUMED_UNLEASED
    # libvirt may also leave it paused: its vCPUs stopped for the final copy and the job failed after that (the
    # destination's libvirtd gone, a lease taken in the gap); it runs nowhere then
    if state_now == "paused":
        return SendFailure.LEFT_PAUSED
    return SendFailure.KEPT


# the checkpoint a SendFailure is seen by: (name, source, detail)
_SEEN_AFTER_FAILED_SEND = {
    SendFailure.RESUMED_UNLEASED: (
        "confirm/source_resumed_unleased",
        "api",
        "QEMU resumed {name} on {src} after the cancelled send; libvirt took no lease back",
    ),
    SendFailure.LEFT_PAUSED: (
        "confirm/source_left_paused",
        "probe",
        "libvirt left {name} paused on {src} after the failed send",
    ),
}
_REACQUIRE_STEPS = {
    "paused": "source_paused",
    "resumed": "source_reacquired",
    "acquire_failed": "source_reacquire_busy",
    "resume_failed": "source_reacquire_failed",
    "running": None,
    "lease_files_created": None,
}


class Transfer:
    """The send (the migration job, under ``timeout``, post-copy and the convergence monitor) and what a
    failed send leaves."""

    def __init__(self, run):
        self.run = run

    def send(self, src_dom):
        plan = self.run.plan
        if plan.max_downtime:
            with libvirt_errors("cannot set the maximum downtime of {}".format(self.run.name)):
                src_dom.migrateSetMaxDowntime(plan.max_downtime, 0)
        if plan.convergence_plan:
            self.run.monitor = ConvergenceMonitor(plan.convergence_plan)
            # the first step of the ramp is in force before the job starts
            self._carry_out(src_dom, self.run.monitor.observe(0.0, {}), 0.0)
        outcome = {}

        def work():
            try:
                if plan.api == "migrate3":
                    outcome["dom"] = src_dom.migrate3(self.run.dest.virt, dict(plan.params), plan.flags_value)
                else:
                    src_dom.migrateToURI3(self.run.params["dest_uri"], dict(plan.params), plan.flags_value)
                outcome["ok"] = True
            except Exception as exc:  # libvirtError
                outcome["error"] = exc

        started = self.run.clock()
        self.run.marks.set("send_start", started)
        worker = threading.Thread(target=work, name="migrate", daemon=True)
        worker.start()
        aborted = switched = False
        switch_error = None
        stats_at = None
        while worker.is_alive():
            worker.join(0.1)
            elapsed = self.run.clock() - started
            if plan.timeout and elapsed > plan.timeout and not aborted and worker.is_alive():
                aborted = True
                try:
                    src_dom.abortJob()
                except Exception as exc:
                    self.run.warnings.append(
                        "could not abort the migration job after {}s: {}".format(plan.timeout, exc)
                    )
            if plan.postcopy_after and elapsed > plan.postcopy_after and not switched and worker.is_alive():
                # QEMU refuses the switch until libvirt has set its migration up (after Begin and Prepare,
                # which reach the destination first): tried again at each turn until it is taken
                switch_error = self._start_postcopy(src_dom, "after {}s (postcopy)".format(plan.postcopy_after))
                switched = switch_error is None
            if (
                self.run.monitor is not None
                and worker.is_alive()
                and (stats_at is None or elapsed - stats_at >= STATS_EVERY)
            ):
                stats_at = elapsed
                try:
                    stats = src_dom.jobStats(0)
                except Exception:
                    stats = {}
                self._carry_out(src_dom, self.run.monitor.observe(elapsed, stats), elapsed)
        self.run.marks.set("send_end", self.run.clock())
        self.run.send_over.set()
        if switch_error is not None and not switched:
            self.run.warnings.append("could not switch to post-copy: {}".format(switch_error))
        if "error" in outcome:
            exc = outcome["error"]
            if libvirt is not None and isinstance(exc, libvirt.libvirtError):
                err = from_libvirt_error(exc)
            else:
                err = VirtError(str(exc))
            if aborted:
                err.msg = "aborted after the {}s timeout: {}".format(plan.timeout, err.msg)
            action = self.run.monitor.action if self.run.monitor is not None else None
            if action and action["do"] == "abort" and not action.get("failed") and not aborted:
                err.msg = "aborted ({}): {}".format(action["detail"], err.msg)
            if self.run.monitor is not None:
                self.run.outcome = self.run.monitor.outcome(False, aborted_by_timeout=aborted)
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
                    self.run.warnings.append(
                        "could not raise the allowed downtime to {} ms at {:.1f}s: {}".format(
                            d["downtime_ms"], elapsed, exc
                        )
                    )
                else:
                    self.run.monitor.action_failed(exc)
                    self.run.warnings.append("convergence: could not {} the migration job: {}".format(d["do"], exc))

    def _start_postcopy(self, src_dom, why, raise_error=False):
        """Switch the job to post-copy; None once switched, else (without ``raise_error``) libvirt's refusal."""
        try:
            src_dom.migrateStartPostCopy(0)
        except Exception as exc:
            if raise_error:
                raise
            return exc
        self.run.marks.set("postcopy", self.run.clock())
        leases = self.run.probe()
        self.run.record(
            "perform/postcopy_switch",
            leases=leases,
            detail="switching to post-copy ({}): {} stops on {} and releases its leases, {} resumes it and takes "
            "them; from here a failure cannot be undone".format(
                why, self.run.name, self.run.src_name, self.run.dest_name
            ),
        )

    def _pause_to_complete(self, src_dom, decision):
        src_dom.suspend()
        self.run.marks.set("forced_pause", self.run.clock())
        leases = self.run.probe()
        held = [r for r in leases if not_released(r)]
        self.run.record(
            "perform/paused_to_complete",
            ok=not held or self.run.src.profile.paused_guest_holds_leases,
            leases=leases,
            detail="convergence: {}; {} paused on {} so that the copy completes ({})".format(
                decision["detail"],
                self.run.name,
                self.run.src_name,
                describe(leases, self.run.src_name, self.run.dest_name),
            ),
        )

    def postcopy_failed(self, err):
        """The job failed after the switch to post-copy: nothing can be taken back.

        libvirt 9.0 with QEMU 7.2 leaves the destination *running* with reason post-copy failed (its vCPUs run
        and wait for every page that stayed on the source) and keeps its incoming job for a post-copy
        recovery; pausing it then waits for that job (libvirt's "cannot acquire state change lock") and fails.
        The message says what each host reports, and whether the source still has the pages a recovery needs.
        """
        self.run.outcome = "postcopy_failed"
        leases = self.run.probe()
        where = []
        paused_now = []
        running = []
        source_alive = False
        for conn, host in ((self.run.src, self.run.src_name), (self.run.dest, self.run.dest_name)):
            dom = lookup(conn, DOMAIN, self.run.name)
            state = self.run.state(conn, dom)
            if state == "running":
                # a copy whose memory is partly on the other host must not run on: paused if libvirt lets us
                try:
                    dom.suspend()
                    paused_now.append(host)
                    state = state_name(dom)
                except Exception as exc:  # libvirtError
                    state = "{}, could not be paused: {}".format(self._state_reason(dom, state), exc)
                    running.append(host)
            elif dom is not None:
                state = self._state_reason(dom, state)
            if host == self.run.src_name and state.split(" ")[0] in ("running", "paused"):
                source_alive = True
            where.append("{}: {}".format(host, state))
        self.run.record(
            "perform/postcopy_failed",
            ok=False,
            leases=leases,
            detail="{}; {}".format(", ".join(where), describe(leases, self.run.src_name, self.run.dest_name)),
        )
        dest_dom = lookup(self.run.dest, DOMAIN, self.run.name)
        if running:
            runs = (
                "runs on {} only as far as its memory arrived there (its vCPUs wait for every page still on {})".format(
                    ", ".join(running), self.run.src_name
                )
            )
        else:
            runs = "runs nowhere"
        if source_alive:
            advice = (
                "Recover it with a post-copy resume (virsh migrate --postcopy --postcopy-resume) once {} is reachable "
                "again, or destroy both copies and start it again from its disks.".format(self.run.dest_name)
            )
        else:
            advice = (
                "{} has no running copy left, so the pages that were still there are lost and a post-copy resume "
                "cannot help: destroy the copy on {} and start the guest again from its disks.".format(
                    self.run.src_name, self.run.dest_name
                )
            )
        msg = (
            "perform: the migration of {0} failed after the switch to post-copy: {1}. This cannot be undone: the "
            "guest's memory is split between {2} and {3}, neither copy can run alone. {0} is left where libvirt "
            "left it ({4}){5} and {6}; leases: {7}. {8}".format(
                self.run.name,
                err.msg,
                self.run.src_name,
                self.run.dest_name,
                "; ".join(where),
                " (paused by the module on {})".format(", ".join(paused_now)) if paused_now else "",
                runs,
                describe(leases, self.run.src_name, self.run.dest_name),
                advice,
            )
        )
        raise self.run.failure(msg, changed=True, state=self.run.state(self.run.dest, dest_dom), leases=leases, err=err)

    @staticmethod
    def _state_reason(dom, state):
        """``state`` with libvirt's reason for it, as far as it can be read ("running (post-copy failed)")."""
        try:
            code, reason = dom.state()
        except Exception:  # libvirtError
            return state
        words = reason_name(code, reason)
        return "{} ({})".format(state, words) if words else state

    def send_failed(self, src_dom, err):
        run = self.run
        plan = run.plan
        run.record("perform/send", ok=False, leases=run.probe(), detail=err.msg)
        self._clear_source_marker(src_dom)
        outcome = classify_failed_send(
            plan,
            run.src_state,
            "forced_pause" in run.marks,
            run.lock_config.enabled,
            state_name(src_dom),
            run.probe(),
        )
        seen = _SEEN_AFTER_FAILED_SEND.get(outcome)
        if seen is not None:
            name, source, detail = seen
            run.record(
                name,
                ok=False,
                leases=run.probe(),
                source=source,
                check="domain state read on {}".format(run.src_name) if source == "probe" else None,
                detail=detail.format(name=run.name, src=run.src_name),
            )
        reacquire_error = None
        if outcome.takes_leases_back:
            lc = run.lifecycle("source", "confirm", _REACQUIRE_STEPS)
            try:
                if outcome is SendFailure.RESUMED_UNLEASED:
                    lc.suspend(src_dom)
                lc.resume(src_dom, required=False, acquire_timeout=plan.acquire_timeout, verify=False)
            except VirtError as exc:
                reacquire_error = exc
        # the destination: no domain left running, no lease held there
        unreachable = None
        try:
            dest_dom, gone = self.run.wait_inactive(self.run.dest, DEST_CLEANUP_TIMEOUT)
        except VirtError as exc:
            # its libvirtd is gone (crashed, or the link to it broke): its copy cannot be seen, but the
            # shared lockspace still shows whether anything there holds a lease
            dest_dom, gone, unreachable = None, True, exc.msg
        leases = self.run.probe()
        # a shareable disk's shared lock held elsewhere (other guests sharing it) is no copy of this guest
        other = [r for r in leases if held_elsewhere(r) and (r.get("holder") != "other" or blocks_dest(r))]
        dest_ok = gone and not other
        if unreachable:
            dest_seen = "a libvirtd that cannot be reached ({}), so no copy that can run".format(unreachable)
        else:
            dest_seen = "no running copy" if gone else "a copy still running"
        self.run.record(
            "finish/dest_clean",
            ok=dest_ok,
            leases=leases,
            host=self.run.dest_name,
            source="probe",
            check="domain lookup on {}; {}".format(self.run.dest_name, self.run.probe_check()),
            detail="{} has {}; {}".format(
                self.run.dest_name, dest_seen, describe(leases, self.run.src_name, self.run.dest_name)
            ),
        )
        src_state = state_name(src_dom)
        held_src = [r for r in leases if source_keeps(r)]
        kept = src_state == "running" and len(held_src) == len(leases)
        if plan.release != RELEASE_BEFORE_SEND:
            self.run.record(
                "confirm/source_kept",
                ok=kept,
                leases=leases,
                source="probe",
                check="domain state read on {}; {}".format(self.run.src_name, self.run.probe_check()),
                detail="{} is {} on {}".format(self.run.name, src_state, self.run.src_name),
            )
        if reacquire_error is not None:
            raise self.run.failure(
                "perform: sending {0} to {1} failed ({2}); confirm: {3} could not take its leases back "
                "({6}): {4}. {0} is {5} on {3} and runs nowhere.".format(
                    self.run.name,
                    self.run.dest_name,
                    err.msg,
                    self.run.src_name,
                    describe(
                        [r for r in leases if not source_keeps(r)] or leases,
                        self.run.src_name,
                        self.run.dest_name,
                    ),
                    src_state,
                    outcome.why_paused.format(src=self.run.src_name),
                ),
                state=self.run.state(self.run.dest, dest_dom),
                leases=leases,
                err=reacquire_error,
                cls=LeaseError,
            )
        msg = "perform: sending {} from {} to {} failed: {}. ".format(
            self.run.name, self.run.src_name, self.run.dest_name, err.msg
        )
        if kept:
            msg += "{} keeps running on {} holding its leases (verified{}); ".format(
                self.run.name, self.run.src_name, outcome.kept_note
            )
        else:
            msg += "{} is {} on {}{}: {}; ".format(
                self.run.name,
                src_state,
                self.run.src_name,
                "" if src_state == "running" else " and runs nowhere (run the task again once it can run)",
                describe(leases, self.run.src_name, self.run.dest_name),
            )
        if unreachable and dest_ok:
            msg += "{}'s libvirtd cannot be reached ({}); it holds no lease (verified)".format(
                self.run.dest_name, unreachable
            )
        elif dest_ok:
            msg += "{} has no copy of it and holds no lease (verified)".format(self.run.dest_name)
        else:
            msg += "{} did not clean up within {}s".format(self.run.dest_name, DEST_CLEANUP_TIMEOUT)
        state = "unknown" if unreachable else self.run.state(self.run.dest, dest_dom)
        raise self.run.failure(msg, state=state, leases=leases, err=err)

    def _clear_source_marker(self, src_dom):
        """The send failed and the guest runs here: its handoff marker goes (a guest left paused keeps it, so
        that a re-run resumes it)."""
        try:
            if state_name(src_dom) == "running":
                self.run.clear_marker(src_dom)
        except Exception:  # libvirtError: the source's libvirtd is gone; a re-run reads the marker then
            pass
