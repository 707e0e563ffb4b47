# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Handoff: the destination takes the guest's leases and runs it, and the source is confirmed stopped.

The send asks libvirt to keep the destination paused (VIR_MIGRATE_PAUSED). With QEMU, libvirt releases
the source's leases when the source's vCPUs stop for the final part of the copy; the destination then
receives the rest and finishes paused, holding no lease. The module watches the destination's lifecycle
events: once it has finished receiving (SUSPENDED/paused after STARTED/migrated) and the lease probe shows
the source's virtlockd holds none of the guest's leases, it resumes the destination (its lock manager
takes the leases then) while libvirt confirms the source, exactly where libvirt's own non-paused flow
would resume it. Without events, or when the probe still sees a lease held by the source, it resumes only
after the migration call returned. Then it checks that the source stopped and that the leases are held by
a process other than the source's virtlockd (part of the migration manager).

No lease probe runs in libvirt's event thread: a probe reads the shared lockspace, and a hung shared
filesystem must not stall the delivery of events. The event callback only records the event (its time is the
checkpoint's ``at``) and hands the probe to the prober thread, which stamps its own time (``probed_at``).
"""

from __future__ import annotations

import queue
import threading

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import LeaseError, VirtError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.events import (
    RESUMED_POSTCOPY,
    STARTED_MIGRATED,
    SUSPENDED_PAUSED,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.leaseview import (
    blocks_dest,
    describe,
    dest_holds,
    not_released,
    shared_unattributed,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.plan import RELEASE_BEFORE_SEND
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.timing import (
    job_summary,
    ms_between,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup

# Lifecycle's step names during a resume that the migration's own checkpoints already cover
RESUME_STEPS = {
    "resumed": None,
    "running": None,
    "acquire_failed": "acquire_busy",
    "resume_failed": "resume_failed",
    "lease_files_created": None,
}
RELEASE_POLL = 0.02  # seconds between lease probes while the source lets its leases go
RELEASE_WAIT = 2.0  # seconds the source's virtlockd gets to drop the leases of a stopped QEMU
CONFIRM_WAIT = 10  # seconds libvirt gets to stop the source after the handoff


class Handoff:
    """The destination's side of the run: lifecycle events, the early resume, and the checks after the send.

    ``resumed_dom``: the destination's domain once the handoff resumed it (None until then).
    """

    def __init__(self, run):
        self.run = run
        self._arrived = threading.Event()
        self._resumer = None
        self.resumed_dom = None  # the destination's domain, once resumed by the handoff
        self._resume_error = None
        self._verify_error = None
        self._probe_jobs = queue.Queue()
        self._prober = None

    # ------------------------------------------------------------------ events (event thread: quick)
    def on_event(self, role, event, detail, item):
        """libvirt's event thread: record the event and signal; never probe or call libvirt here."""
        if role == "dest" and event == "resumed" and detail == RESUMED_POSTCOPY:
            self._postcopy_running(item)
        elif role == "dest" and event == "started" and detail == STARTED_MIGRATED:
            self._record_first_event(
                "prepare",
                item,
                "prepare/register",
                lambda leases: (
                    self.run.src.profile.paused_guest_holds_leases or not any(blocks_dest(r) for r in leases)
                ),
                "incoming guest created paused on {}".format(self.run.dest_name),
            )
        elif role == "source" and event == "suspended":
            # the first stop of the source's vCPUs: for the final copy (migrated), or a forced pause;
            # QEMU's lock manager releases the leases there
            self.run.marks.first("source_suspended", item)
        elif role == "dest" and event == "suspended" and detail == SUSPENDED_PAUSED:
            with self.run.marks.locked() as marks:
                if "prepare" not in marks:
                    return
                marks.setdefault("arrived", item)
            self._arrived.set()

    def _postcopy_running(self, item):
        self._record_first_event(
            "postcopy_running",
            item,
            "perform/postcopy_dest_running",
            lambda leases: not any(not_released(r) for r in leases),
            "post-copy: {} runs on {} while its memory follows".format(self.run.name, self.run.dest_name),
        )

    def _record_first_event(self, mark, item, name, ok_of, what):
        """Mark the first such event of the send and queue checkpoint ``name`` (stamped by the event) for the
        prober thread, which probes the leases; ``ok_of(leases)`` judges the probe. Runs in the event thread."""
        with self.run.marks.locked() as marks:
            if self.run.send_over.is_set() or mark in marks:
                return
            marks[mark] = item["t"]
        self._probe_jobs.put((item, name, ok_of, what))

    # ------------------------------------------------------------------ the prober (its own thread)
    def start_prober(self):
        if self._prober is None:
            self._prober = threading.Thread(target=self._prober_loop, name="lease-probe", daemon=True)
            self._prober.start()

    def _prober_loop(self):
        while True:
            job = self._probe_jobs.get()
            try:
                if job is None:
                    return
                self._probe_for_event(*job)
            except Exception as exc:  # a probe that broke: said in the checkpoint, never lost
                item, name = job[0], job[1]
                self.run.record(
                    name,
                    ok=False,
                    host=self.run.dest_name,
                    at=item["at"],
                    source="event",
                    detail="the lease probe after this event failed: {}".format(exc),
                )
            finally:
                self._probe_jobs.task_done()

    def _probe_for_event(self, item, name, ok_of, what):
        leases = self.run.probe()
        self.run.record(
            name,
            ok=ok_of(leases),
            leases=leases,
            host=self.run.dest_name,
            at=item["at"],
            source="event",
            check=self.run.probe_check(),
            detail="{}; {}".format(what, describe(leases, self.run.src_name, self.run.dest_name)),
        )

    def drain_probes(self):
        """Wait until every queued event probe was recorded."""
        if self._prober is not None:
            self._probe_jobs.join()

    def stop_prober(self):
        if self._prober is not None:
            self._probe_jobs.put(None)
            self._prober.join()
            self._prober = None

    # ------------------------------------------------------------------ the early resume (its own thread)
    def _can_resume_early(self):
        cfg = self.run.lock_config
        return bool(
            self.run.events is not None
            and self.run.events.available
            and self.run.plan.handoff == "verified"
            and self.run.plan.release != RELEASE_BEFORE_SEND
            and self.run.src_state == "running"
            and self.run.plan.verify
            and cfg.enabled
            and cfg.probeable
            and self.run.resources
            and not self.run.dest.profile.paused_guest_holds_leases
        )

    def start_resumer(self):
        if self._can_resume_early():
            self._resumer = threading.Thread(target=self._resume_when_arrived, name="handoff", daemon=True)
            self._resumer.start()

    def join_resumer(self):
        if self._resumer is not None:
            self._resumer.join()
            self._resumer = None

    def _resume_when_arrived(self):
        while not self._arrived.wait(0.01):
            if self.run.send_over.is_set():
                return  # no arrival seen while the call ran: the after-send path takes over
        self.drain_probes()  # the events' checkpoints first: they saw earlier things
        try:
            dest_dom = lookup(self.run.dest, DOMAIN, self.run.name)
            if dest_dom is None or state_name(dest_dom) != "paused":
                return
            leases = self._wait_released()
            if self._still_held(leases):
                return  # the after-send path reports it
            self._record_arrived(dest_dom)
            self._resume_dest(dest_dom)
            self.resumed_dom = dest_dom
        except VirtError as err:
            self._resume_error = err
            return
        try:
            self._verify_dest(dest_dom)
        except VirtError as err:  # carries the whole result: the main thread raises it after the confirm
            self._verify_error = err
        except Exception as exc:  # libvirtError from a lookup: reported by the main thread
            self._resume_error = VirtError("finish: {}".format(exc))

    # ------------------------------------------------------------------ steps
    def _source_stopped(self):
        """Evidence that libvirt ran its lock release for the source's QEMU process: the source's SUSPENDED
        event (libvirt releases before it queues that event), or its state read as not running. Returns a
        text naming the evidence, or None."""
        if self.run.marks.get("source_suspended"):
            return "{}'s SUSPENDED event".format(self.run.src_name)
        try:
            dom = lookup(self.run.src, DOMAIN, self.run.name)
            state = "absent" if dom is None else state_name(dom)
        except Exception:  # VirtError or libvirtError: no evidence
            return None
        return None if state == "running" else "{}'s state read: {}".format(self.run.src_name, state)

    def _still_held(self, leases):
        """The leases the source still holds for the guest: held by its virtlockd for it, or a shareable disk's
        share kept there for other guests too while nothing shows that the guest's own QEMU let go."""
        still = [r for r in leases if not_released(r)]
        if shared_unattributed(leases) and self._source_stopped() is None:
            still += shared_unattributed(leases)
        return still

    def _wait_released(self, wait=RELEASE_WAIT):
        """Probe until the source holds none of the guest's leases (or ``wait`` passed); record
        perform/source_released, stamped by the source's SUSPENDED (migrated) event when there is one."""
        deadline = self.run.clock() + wait
        while True:
            leases = self.run.probe()
            still = self._still_held(leases)
            if not still or self.run.clock() >= deadline:
                break
            self.run.sleep(RELEASE_POLL)
        with self.run.marks.locked() as marks:
            stopped = marks.get("source_suspended")
            if "released" in marks and self.run.recorder.find("perform/source_released"):
                return leases
            if "released" not in marks:
                marks["released"] = stopped["t"] if stopped and not still else None
        if stopped is not None and not still:
            at, source = stopped["at"], "event"
            how = "{} released them when its vCPUs stopped for the final part of the copy; ".format(self.run.src_name)
        else:
            at, source = None, "probe"
            how = "seen by the probe: " if not still else "still held after {:.0f}s: ".format(wait)
        check = self.run.probe_check()
        if shared_unattributed(leases):
            evidence = self._source_stopped()
            check += "; the guest's own shares: {}".format(
                "released with its other leases at the vCPU stop ({})".format(evidence)
                if evidence
                else "no evidence that its vCPUs stopped"
            )
        self.run.record(
            "perform/source_released",
            ok=not still,
            leases=leases,
            at=at,
            source=source,
            check=check,
            detail=how + describe(leases, self.run.src_name, self.run.dest_name),
        )
        return leases

    def _record_arrived(self, dest_dom):
        arrived = self.run.marks.get("arrived")
        state = state_name(dest_dom)
        sent = "sent in {} ms".format(
            ms_between(self.run.marks.get("send_start"), self.run.marks.get("send_end") or self.run.clock())
        )
        self.run.record(
            "perform/send",
            ok=state == "paused" or self.run.plan.handoff != "verified",
            leases=self.run.probe(),
            host=self.run.dest_name,
            at=arrived["at"] if arrived else None,
            source="event" if arrived else "api",
            check="domain state read on {}: {}".format(self.run.dest_name, state),
            detail=(
                "{} holds the whole guest, paused (VIR_MIGRATE_PAUSED); ".format(self.run.dest_name)
                if self.run.plan.handoff == "verified"
                else "post-copy: libvirt ran the guest on the destination; "
                if "postcopy" in self.run.marks
                else "libvirt resumed the guest on the destination; "
            )
            + ("seen as it happened" if arrived else sent),
        )

    def _resume_dest(self, dest_dom):
        lc = self.run.lifecycle("dest", "finish", RESUME_STEPS)
        try:
            self.run.resume_destination(lc, dest_dom)
        except VirtError as err:
            if state_name(dest_dom) != "running":
                raise
            # another run resumed it first (a re-run reconciling at the same moment): it runs, leased
            self.run.warnings.append(
                "{} was resumed on {} by another run: {}".format(self.run.name, self.run.dest_name, err.msg)
            )
        state = state_name(dest_dom)
        self.run.record(
            "finish/resumed",
            ok=state == "running",
            host=self.run.dest_name,
            check="domain state read on {}: {}".format(self.run.dest_name, state),
            detail="{} is {} on {}".format(self.run.name, state, self.run.dest_name),
        )

    def _verify_dest(self, dest_dom, paused_ok=False):
        leases = self.run.probe()
        bad = [r for r in leases if not dest_holds(r)]
        if paused_ok:
            bad = [r for r in leases if not_released(r)]
        detail = describe(leases, self.run.src_name, self.run.dest_name)
        if not bad and leases and not any(r.get("holder") == "dest" for r in leases):
            # from the source host virtlockd's lock shows a holder that is not the source's virtlockd; it
            # cannot name the destination's (sanlock's lease area does: holder "dest")
            detail = "held, not by {}'s virtlockd (the destination's lock manager took them as it resumed): {}".format(
                self.run.src_name, detail
            )
        check = self.run.probe_check()
        if any(r.get("shared") for r in leases) and not bad:
            check += (
                "; a shareable disk's share on {} is not visible behind another holder's shared lock: the "
                "resume succeeding is the evidence (libvirt takes every lease before the vCPUs run, and a "
                "refused one fails the resume)".format(self.run.dest_name)
            )
        self.run.record(
            "finish/dest_acquired",
            ok=not bad,
            leases=leases,
            host=self.run.dest_name,
            source="probe",
            check=check,
            detail=detail,
        )
        if bad and self.run.plan.verify:
            state = state_name(dest_dom)
            if state == "running" and not self.run.dest.profile.paused_guest_holds_leases:
                try:
                    dest_dom.suspend()
                    state = "paused"
                except Exception:
                    pass
            if state not in ("running", "paused"):
                raise self.run.failure(
                    "finish: {0} stopped on {1} right after it resumed there (now {2}); its leases went with it "
                    "and it runs nowhere - start it on {1}".format(self.run.name, self.run.dest_name, state),
                    changed=True,
                    state=state,
                    leases=leases,
                )
            raise self.run.failure(
                "finish: {} {} on {} without holding its leases ({}){}".format(
                    self.run.name,
                    "was running" if state == "paused" else "is " + state,
                    self.run.dest_name,
                    describe(bad, self.run.src_name, self.run.dest_name),
                    "; it was paused and runs nowhere" if state == "paused" else "",
                ),
                changed=True,
                state=state,
                leases=leases,
                cls=LeaseError,
            )
        return leases

    def _confirm(self):
        """Wait for libvirt to stop the source; record confirm/source_stopped. Returns the source's state."""
        src_dom, stopped = self.run.wait_inactive(self.run.src, CONFIRM_WAIT)
        state = "absent" if src_dom is None else state_name(src_dom)
        ev = self.run.events.first("source", "stopped") if self.run.events is not None else None
        self.run.record(
            "confirm/source_stopped",
            ok=stopped,
            at=ev["at"] if ev and stopped else None,
            source="event" if ev and stopped else "api",
            check="domain lookup on {}: {}".format(self.run.src_name, "undefined" if src_dom is None else state),
            detail="{} on {}: {}".format(self.run.name, self.run.src_name, "undefined" if src_dom is None else state),
        )
        return src_dom, state, stopped

    # ------------------------------------------------------------------ after the call
    def complete(self, src_dom, send_error=None):
        """The guest was sent (or libvirt failed after it arrived and resumed): finish and check everything."""
        try:
            return self._finish(src_dom, send_error)
        except VirtError as err:
            if err.result:
                raise
            self.fail_after_send(err)

    def _finish(self, src_dom, send_error):
        plan = self.run.plan
        self.join_resumer()
        self.drain_probes()
        if not self.run.recorder.find("prepare/register"):
            self.run.record(
                "prepare/register",
                host=self.run.dest_name,
                detail="libvirt prepared the destination inside the migration call (no event seen)",
            )
        self.run.job = job_summary(self.run.job_stats())
        dest_dom = self.resumed_dom or lookup(self.run.dest, DOMAIN, self.run.name)
        if dest_dom is None:
            raise self.run.failure(
                "perform: the send returned but {} has no domain {}".format(self.run.dest_name, self.run.name),
                changed=True,
            )
        if self._resume_error is not None:
            return self._resume_failed(dest_dom, self._resume_error)
        leave_paused = self.run.src_state == "paused"
        want = "paused" if leave_paused else "running"
        if self.resumed_dom is None:
            # the after-send path: no arrival seen, or the source still held a lease when it arrived
            if not self.run.recorder.find("perform/send"):
                self._record_arrived(dest_dom)
            leases = (
                self._wait_released() if not self.run.recorder.find("perform/source_released") else self.run.probe()
            )
            still = self._still_held(leases)
            if still and plan.verify:
                raise self.run.failure(
                    "perform: {} still holds {} after the send; {} is left paused on {}, not resumed, and runs "
                    "nowhere".format(
                        self.run.src_name,
                        describe(still, self.run.src_name, self.run.dest_name),
                        self.run.name,
                        self.run.dest_name,
                    ),
                    changed=True,
                    state=state_name(dest_dom),
                    leases=leases,
                )
            if leave_paused:
                self.run.record(
                    "finish/resumed",
                    host=self.run.dest_name,
                    check="domain state read on {}: {}".format(self.run.dest_name, state_name(dest_dom)),
                    detail="not resumed: {} was paused on {} and stays paused".format(self.run.name, self.run.src_name),
                )
            elif state_name(dest_dom) == "paused":
                try:
                    self._resume_dest(dest_dom)
                except VirtError as err:
                    return self._resume_failed(dest_dom, err)
            else:
                state = state_name(dest_dom)
                self.run.record(
                    "finish/resumed",
                    ok=state == "running",
                    host=self.run.dest_name,
                    check="domain state read on {}: {}".format(self.run.dest_name, state),
                    detail="libvirt resumed {} on {}{}".format(
                        self.run.name, self.run.dest_name, " (post-copy)" if "postcopy" in self.run.marks else ""
                    ),
                )
        if self.resumed_dom is None:
            leases = self._verify_dest(dest_dom, paused_ok=leave_paused)
        _src_left, src_state, stopped = self._confirm()
        if self._verify_error is not None:
            raise self._verify_error
        if self.resumed_dom is not None:
            leases = self.run.probe()
        dest_state = state_name(dest_dom)
        if send_error is None and dest_state == want and stopped:
            self.run.clear_marker(dest_dom)
        result = self.run.result(changed=True, state=dest_state, leases=leases)
        self.run.timing(result)
        if send_error is not None:
            raise self.run.failure(
                "perform: libvirt reported an error after {0} had arrived on {1} and resumed there: {2}. {0} is {3} "
                "on {1} ({4}); on {5} it is {6}{7}".format(
                    self.run.name,
                    self.run.dest_name,
                    send_error.msg,
                    dest_state,
                    describe(leases, self.run.src_name, self.run.dest_name),
                    self.run.src_name,
                    src_state,
                    "" if stopped else ": run the task again to remove that stale copy",
                ),
                changed=True,
                state=dest_state,
                leases=leases,
                err=send_error,
            )
        if not stopped:
            raise self.run.failure(
                "confirm: {0} is {1} on {2} after the handoff and {3} on {4}; {2} should have stopped it".format(
                    self.run.name, src_state, self.run.src_name, dest_state, self.run.dest_name
                ),
                changed=True,
                state=dest_state,
                leases=leases,
            )
        if dest_state != want:
            raise self.run.failure(
                "finish: {} is {} on {}, not {}{}".format(
                    self.run.name,
                    dest_state,
                    self.run.dest_name,
                    want,
                    ""
                    if dest_state in ("running", "paused")
                    else ": it stopped there after it resumed and runs nowhere - start it on {}".format(
                        self.run.dest_name
                    ),
                ),
                changed=True,
                state=dest_state,
                leases=leases,
            )
        return result

    def _resume_failed(self, dest_dom, err):
        leases = self.run.probe()
        self.run.record(
            "finish/dest_acquired",
            ok=False,
            leases=leases,
            host=self.run.dest_name,
            source="probe",
            check=self.run.probe_check(),
            detail="{} could not resume {}: {}".format(self.run.dest_name, self.run.name, err.msg),
        )
        _src, src_state, _stopped = self._confirm()
        dest_state = state_name(dest_dom)
        if dest_state not in ("running", "paused"):
            # its QEMU ended before it could resume (killed, crashed): the source is gone too after libvirt's
            # confirm, so nothing but a start runs the guest again
            raise self.run.failure(
                "finish: {0} stopped on {1} before it could resume there (now {2}; {3}: {4}): it runs nowhere - "
                "start it on {1}".format(self.run.name, self.run.dest_name, dest_state, self.run.src_name, src_state),
                changed=True,
                state=dest_state,
                leases=leases,
                err=err,
            )
        took_back = self.run.source_runs_again()
        if took_back:
            # a lost Finish reply: libvirt's confirm ran cancelled and resumed the source, which is the newest
            raise self.run.failure(
                "finish: {}; {} is left paused on {}, never resumed: run the task again, it removes that copy and "
                "migrates the running guest again".format(took_back, self.run.name, self.run.dest_name),
                changed=True,
                state=dest_state,
                leases=leases,
                err=err,
            )
        blocking = [r for r in leases if r.get("held")] or leases
        waited = " within lock.acquire_timeout ({}s)".format(self.run.plan.acquire_timeout) if err.is_busy else ""
        raise self.run.failure(
            "finish: {0} could not take the leases of {1}{2}: {3}. {1} is left {4} on {0}{5} ({6}: {7}); run the "
            "task again once the lease is free: it resumes the guest there".format(
                self.run.dest_name,
                self.run.name,
                waited,
                describe(blocking, self.run.src_name, self.run.dest_name),
                dest_state,
                " and runs nowhere" if dest_state != "running" and src_state != "running" else "",
                self.run.src_name,
                src_state,
            ),
            changed=True,
            state=dest_state,
            leases=leases,
            err=err,
            cls=LeaseError if err.is_busy else VirtError,
        )

    def fail_after_send(self, err, phase="finish", changed=None):
        """A libvirt error the handoff did not expect (a lookup, a state read, a dropped connection): fail with
        the whole result, the phase named and where the guest is, read again - over a new connection when the
        old one broke (a restarted libvirtd)."""
        src_state, dest_state = self.run.read_state("source"), self.run.read_state("dest")
        try:
            leases = self.run.probe()
        except Exception:  # the lease view is local: only a bad lock configuration gets here
            leases = None
        msg = err.msg if err.msg.split(":")[0] in ("begin", "perform", "finish", "confirm") else phase + ": " + err.msg
        if changed is None:  # the guest is not where and as it was
            changed = not (src_state == self.run.src_state and dest_state in ("absent", "shutoff"))
        where = "{} on {}, {} on {}".format(src_state, self.run.src_name, dest_state, self.run.dest_name)
        if "running" in (src_state, dest_state):
            tail = ""
        elif "unknown" in (src_state, dest_state):
            tail = "; it may be running nowhere - run the task again once both hosts answer: it finishes the handoff"
        else:
            tail = "; it runs nowhere: run the task again, it finishes the handoff"
        raise self.run.failure(
            "{}. {} is {}{}".format(msg, self.run.name, where, tail),
            changed=changed,
            state=dest_state,
            leases=leases,
            err=err,
        )
