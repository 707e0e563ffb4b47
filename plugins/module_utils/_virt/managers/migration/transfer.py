# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The transfer: ``migrateToURI3``/``migrate3`` runs in a worker thread while the main thread watches the
destination's lifecycle events (or its state) and the job, applies convergence control, and hands the guest
over as soon as the destination has finished receiving - not after the source's Confirm. A failed send is
cleaned up and reported from the state read afterwards.
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
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import Lifecycle, state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration import (
    RELEASE_BEFORE_SEND,
    LifecycleEvents,
    PhaseRecorder,
    describe,
    holders,
    job_summary,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.events import (
    RESUMED_POSTCOPY,
    STARTED_MIGRATED,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.marker import marker_xml
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup

DEST_CLEANUP_TIMEOUT = 20  # seconds the destination gets to remove a half-received guest
STATS_EVERY = 0.25  # seconds between job statistics reads when convergence is controlled
WATCH_EVERY = 0.05  # seconds between two looks at the job when no event wakes the watcher


class TransferPhase:
    def _on_event(self, item):
        """Runs in the event thread: record what only an event shows, at the event's time."""
        role, event, detail = item["role"], item["event"], item["detail"]
        if role == "dest" and event == "resumed" and detail == RESUMED_POSTCOPY:
            with self._lock:
                if self._send_done or "postcopy_running" in self.marks:
                    return
                self.marks["postcopy_running"] = item["ts"]
            leases, ts = self._probed()
            self._record(
                "perform/postcopy_dest_running",
                ok="source" not in holders(leases),
                leases=leases,
                host=self.dest_name,
                at=item["ts"],
                source="event",
                verified_by="lease probe (F_GETLK)",
                detail="post-copy: {} runs on {} while its memory follows; {}".format(
                    self.name, self.dest_name, describe(leases, self.src_name, self.dest_name)
                ),
            )
            return
        if role == "dest" and event == "started" and detail == STARTED_MIGRATED:
            with self._lock:
                if self._send_done or "prepare" in self.marks:
                    return
                self.marks["prepare"] = item["ts"]
            leases, ts = self._probed()
            self._record(
                "prepare/register",
                leases=leases,
                host=self.dest_name,
                at=item["ts"],
                source="event",
                verified_by="lease probe (F_GETLK)",
                ok=self.src.profile.paused_guest_holds_leases or "other" not in holders(leases),
                detail="incoming guest created paused on {} (lifecycle event STARTED/migrated); {}".format(
                    self.dest_name,
                    "the driver takes leases at creation"
                    if self.src.profile.paused_guest_holds_leases
                    else "nobody else holds its leases",
                ),
            )

    def _migrate(self, src_dom, leases, probed_at):
        plan = self.plan
        self.marks["begin"] = self.clock()
        self._record(
            "begin/inquire",
            leases=leases,
            ok=self.src_state == "paused" or not leases or holders(leases) == ["source"],
            at=probed_at,
            source="probe",
            verified_by="lease probe (F_GETLK) and state read",
            detail="{} {} on {}; flags {}; {}".format(
                self.name,
                self.src_state,
                self.src_name,
                "|".join(plan["flags"]),
                describe(leases, self.src_name, self.dest_name),
            ),
        )
        if self.use_events:
            factory = self.use_events if callable(self.use_events) else LifecycleEvents
            self.events = factory(self.name, clock=self.clock, wall=self.wall, on_event=self._on_event)
            self.events.watch(self.src, "source")
            self.events.watch(self.dest, "dest")
        if plan["handoff"] == "verified":
            self.marked = self._set_marker(self.src, src_dom, marker_xml(self.dest_name, self.src_state == "running"))
        if plan["release"] == RELEASE_BEFORE_SEND:
            lc = Lifecycle(
                self.src,
                PhaseRecorder(self.rec, "perform", {"paused": "source_paused", "leases_released": None}),
                self.lock_config,
            )
            if self.src_state == "running":
                lc.suspend(src_dom)
            leases, ts = self._probed()
            held = [r for r in leases if r.get("holder") == "source"]
            self._record(
                "perform/source_released",
                ok=not held,
                leases=leases,
                at=ts,
                source="probe",
                verified_by="lease probe (F_GETLK)",
                detail="released before the send (old ordering): " + describe(leases, self.src_name, self.dest_name),
            )
        self.sent = True
        try:
            self._send(src_dom)
        except VirtError as err:
            if "postcopy" in self.marks:
                return self._postcopy_failed(err)
            if self.marks.get("handed"):
                return self._failed_after_handoff(err)
            return self._send_failed(src_dom, err)
        if self.monitor is not None:
            self.outcome = self.monitor.outcome(True)
        return self._after_send()

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
            outcome["ts"] = self.wall()

        started = self.marks["send_start"] = self.clock()
        worker = threading.Thread(target=work, name="migrate", daemon=True)
        worker.start()
        aborted = switched = False
        stats_at = None
        early = plan["handoff"] == "verified" and self.src_state == "running"
        while worker.is_alive():
            if self.events is not None and self.events.available:
                self.events.wait_any(WATCH_EVERY)
            else:
                worker.join(WATCH_EVERY / 5 if early else WATCH_EVERY)
            elapsed = self.clock() - started
            if early and not self.marks.get("handed") and not switched:
                self._early_handoff()
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
        self.marks["returned"] = outcome.get("ts")
        with self._lock:
            self._send_done = True
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

    def _early_handoff(self):
        """While libvirt still confirms on the source: hand over as soon as the destination has the guest."""
        seen = self._dest_finished()
        if seen is None:
            return
        self.marks["handed"] = True
        try:
            dest_dom = seen.get("dom") or lookup(self.dest, DOMAIN, self.name)
            if dest_dom is None:
                raise VirtError("{} reported {} but has no domain {}".format(self.dest_name, seen["what"], self.name))
            self._record_received(seen, dest_dom)
            self._hand_over(dest_dom)
        except VirtError as err:
            self.handoff_error = err

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
        leases, ts = self._probed()
        self._record(
            "perform/postcopy_switch",
            leases=leases,
            verified_by="lease probe (F_GETLK) after the switch",
            detail="switching to post-copy ({}): {} stops on {} and releases its leases, {} resumes it and takes "
            "them; from here a failure cannot be undone".format(why, self.name, self.src_name, self.dest_name),
        )

    def _pause_to_complete(self, src_dom, decision):
        src_dom.suspend()
        self.marks["forced_pause"] = self.clock()
        leases, ts = self._probed()
        held = [r for r in leases if r.get("holder") == "source"]
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

    def _send_failed(self, src_dom, err):
        plan = self.plan
        leases, ts = self._probed()
        self._record(
            "perform/send",
            ok=False,
            leases=leases,
            at=self.marks.get("returned"),
            verified_by="lease probe (F_GETLK)",
            detail=err.msg,
        )
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
            and any(r.get("holder") != "source" for r in self._probe())
        )
        if resumed_unleased:
            self._record(
                "confirm/source_resumed_unleased",
                ok=False,
                leases=self._probe(),
                source="probe",
                verified_by="lease probe (F_GETLK) and state read",
                detail="QEMU resumed {} on {} after the cancelled send; libvirt took no lease back".format(
                    self.name, self.src_name
                ),
            )
        if (before_send or forced_pause or resumed_unleased) and self.src_state == "running":
            lc = Lifecycle(
                self.src,
                PhaseRecorder(
                    self.rec,
                    "confirm",
                    {
                        "paused": "source_paused",
                        "resumed": "source_reacquired",
                        "acquire_failed": "source_reacquire_busy",
                        "resume_failed": "source_reacquire_failed",
                        "running": None,
                        "lease_files_created": None,
                    },
                ),
                self.lock_config,
                sleep=self.sleep,
                clock=self.clock,
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
        other = [r for r in leases if r.get("holder") == "other"]
        dest_ok = gone and not other
        if unreachable:
            dest_seen = "a libvirtd that cannot be reached ({}), so no copy that can run".format(unreachable)
        else:
            dest_seen = "no running copy" if gone else "a copy still running"
        self._record(
            "finish/dest_clean",
            ok=dest_ok,
            leases=leases,
            source="probe",
            verified_by="lease probe (F_GETLK) and state read on {}".format(self.dest_name),
            host=self.dest_name,
            detail="{} has {}; {}".format(self.dest_name, dest_seen, describe(leases, self.src_name, self.dest_name)),
        )
        src_state = state_name(src_dom)
        held_src = [r for r in leases if r.get("holder") == "source"]
        kept = src_state == "running" and len(held_src) == len(leases)
        if not before_send:
            self._record(
                "confirm/source_kept",
                ok=kept,
                leases=leases,
                source="probe",
                verified_by="lease probe (F_GETLK) and state read",
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
                    describe(
                        [r for r in leases if r.get("holder") != "source"] or leases, self.src_name, self.dest_name
                    ),
                    src_state,
                    "lock.release: before_send, the old ordering"
                    if before_send
                    else "it was paused on {} so that the copy would complete".format(self.src_name)
                    if forced_pause
                    else "QEMU had stopped it for the final copy and resumed it unleased when the send was cancelled",
                ),
                state=self._state(self.dest, dest_dom),
                leases=leases,
                err=reacquire_error,
                cls=LeaseError,
            )
        if self.marked and src_state == "running":
            # a source left paused keeps the marker: a re-run then resumes it
            self._set_marker(self.src, src_dom, None)
        msg = "perform: sending {} from {} to {} failed: {}. ".format(self.name, self.src_name, self.dest_name, err.msg)
        if kept:
            msg += "{} keeps running on {} holding its leases (verified{}); ".format(
                self.name,
                self.src_name,
                ", taken back after QEMU resumed it unleased" if resumed_unleased else "",
            )
        else:
            msg += "{} is {} on {}: {}; ".format(
                self.name, src_state, self.src_name, describe(leases, self.src_name, self.dest_name)
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

    def _wait_inactive(self, conn, timeout):
        deadline = self.clock() + timeout
        while True:
            dom = lookup(conn, DOMAIN, self.name)
            if dom is None or not self._active(dom):
                return dom, True
            if self.clock() >= deadline:
                return dom, False
            self.sleep(0.2)

    # ------------------------------------------------------------------ after the call returned
    def _prepare_inferred(self):
        with self._lock:
            prepared = "prepare" in self.marks
        if not prepared:
            self._record(
                "prepare/register",
                host=self.dest_name,
                at=self.marks.get("returned"),
                verified=False,
                detail="not observed: libvirt prepared the destination inside the migration call (no event seen)",
            )

    def _after_send(self):
        plan = self.plan
        self._prepare_inferred()
        self.job = job_summary(self._job_stats())
        dest_dom = lookup(self.dest, DOMAIN, self.name)
        if dest_dom is None:
            src_state = self._state_of(self.src)
            self._fail(
                "perform: the migration call succeeded but {} has no domain {}; it is {} on {}".format(
                    self.dest_name, self.name, src_state, self.src_name
                ),
                changed=src_state != "running",
                state="absent",
                leases=self._probe(),
            )
        if plan["handoff"] == "verified":
            if not self.marks.get("handed"):
                self.marks["handed"] = True
                seen = self._dest_finished_event() or {
                    "ts": self.marks.get("returned") or self.wall(),
                    "source": "api",
                    "what": "the migration call returned",
                }
                self._record_received(seen, dest_dom)
                try:
                    if self.src_state == "running":
                        self._hand_over(dest_dom)
                    else:
                        self._keep_paused(dest_dom)
                except VirtError as err:
                    self.handoff_error = err
        else:
            # post-copy: libvirt resumed the destination itself; verify afterwards
            self._record(
                "perform/send",
                host=self.dest_name,
                at=self.marks.get("returned"),
                verified=False,
                detail="the transfer completed (the migration call returned); {}".format(
                    "libvirt ran the guest on the destination from the switch to post-copy"
                    if "postcopy" in self.marks
                    else "post-copy allowed but not needed: libvirt resumed the guest on the destination"
                ),
            )
            try:
                self._wait_released()
                self._verify_dest(dest_dom, "finish")
                self._record_resumed(dest_dom, "finish")
            except VirtError as err:
                self.handoff_error = err
        src_state, stopped = self._confirm()
        return self._conclude(dest_dom, src_state, stopped)

    def _keep_paused(self, dest_dom):
        """The guest was paused on the source: it stays paused on the destination (a qemu guest holds no lease)."""
        leases, _still = self._wait_released()
        self._record(
            "finish/dest_acquired",
            ok=True,
            leases=leases,
            host=self.dest_name,
            source="probe",
            verified_by="lease probe (F_GETLK)",
            detail="not acquired: {} was paused on {} and stays paused".format(self.name, self.src_name),
        )
        state = self._state(self.dest, dest_dom)
        self._record(
            "finish/resumed",
            ok=state == "paused",
            host=self.dest_name,
            verified_by="state read on {}: {}".format(self.dest_name, state),
            detail="{} is {} on {} (left paused as it was on {})".format(
                self.name, state, self.dest_name, self.src_name
            ),
        )

    def _conclude(self, dest_dom, src_state, stopped, api_error=None):
        """The whole result, from the state read now; fails when the guest is not where it must be."""
        leases = self._probe()
        dest_state = self._state_of(self.dest)
        want = "paused" if self.src_state == "paused" else "running"
        err = self.handoff_error
        if err is None and dest_state == want and stopped and self.marked:
            self._set_marker(self.dest, dest_dom, None)
        if err is not None:
            self._fail(
                "{}. Now: {} is {} on {} and {} on {}{}".format(
                    err.msg.rstrip("."),
                    self.name,
                    dest_state,
                    self.dest_name,
                    src_state,
                    self.src_name,
                    "; it runs nowhere: run the task again to finish the handoff once the cause is gone"
                    if dest_state != "running" and src_state != "running"
                    else "",
                ),
                changed=True,
                state=dest_state,
                leases=leases,
                err=err,
                cls=type(err) if isinstance(err, VirtError) else VirtError,
            )
        if not stopped:
            self._fail(
                "confirm: {} is still {} on {} after the handoff{}; it is {} on {}. Two copies exist: check "
                "which one holds the leases ({}) before touching either".format(
                    self.name,
                    src_state,
                    self.src_name,
                    " (the migration call failed: {})".format(api_error.msg) if api_error is not None else "",
                    dest_state,
                    self.dest_name,
                    describe(leases, self.src_name, self.dest_name),
                ),
                changed=True,
                state=dest_state,
                leases=leases,
                err=api_error,
            )
        if dest_state != want:
            self._fail(
                "finish: {} is {} on {}, not {}".format(self.name, dest_state, self.dest_name, want),
                changed=True,
                state=dest_state,
                leases=leases,
            )
        if api_error is not None:
            self.warnings.append(
                "the migration call reported an error after {} was resumed on {}: {}".format(
                    self.name, self.dest_name, api_error.msg
                )
            )
        result = self._result(changed=True, state=dest_state, leases=leases)
        self._timing(result)
        return result

    def _failed_after_handoff(self, err):
        """The migration call failed after the destination had finished receiving (and maybe been resumed)."""
        self._prepare_inferred()
        src_state, stopped = self._confirm(api_error=err)
        dest_dom = lookup(self.dest, DOMAIN, self.name)
        return self._conclude(dest_dom, src_state, stopped, api_error=err)
