# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The handoff: once the destination has finished receiving (paused, seen by its lifecycle event or, without
events, by its state) and the lease probe shows the source holds none of the guest's leases, resume the
destination - while libvirt is still confirming on the source - then verify and confirm the source.

The destination is never resumed before a probe shows the source released: that is the ordering rule.
"""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import iso_utc
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import LeaseError, VirtError, libvirt_errors
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import Lifecycle, state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration import PhaseRecorder, describe
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.events import (
    STOPPED_MIGRATED,
    SUSPENDED_MIGRATED,
    SUSPENDED_PAUSED,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.marker import METADATA_KEY, METADATA_NS
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup

RELEASE_WAIT = 10.0  # seconds the source's leases get to go (virtlockd drops them when QEMU exits)
SOURCE_STOP_WAIT = 10.0  # seconds the source gets to stop after the send returned
PAUSED_MIGRATION = 2  # VIR_DOMAIN_PAUSED_MIGRATION: paused while migrating (incoming, or the source's final stop)
PAUSED_USER = 1


def job_type(dom):
    """libvirt's job type of ``dom`` (0: none), or None when it cannot be read."""
    try:
        return dom.jobInfo()[0]
    except Exception:
        return None


def state_reason(dom):
    try:
        return tuple(dom.state())
    except Exception:
        return (None, None)


class HandoffPhase:
    # ------------------------------------------------------------------ marker
    def _set_marker(self, conn, dom, value):
        """Write (value: XML) or clear (None) the handoff marker, live and persistent; best effort."""
        if libvirt is None:
            return False
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE
        try:
            if dom.isPersistent():
                flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
        except Exception:
            pass
        try:
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                value,
                METADATA_KEY if value else None,
                METADATA_NS,
                flags,
            )
            return True
        except Exception as exc:
            self.warnings.append(
                "could not {} the handoff marker of {} on {}: {}".format(
                    "write" if value else "clear", self.name, conn.hostname, exc
                )
            )
            return False

    # ------------------------------------------------------------------ finished receiving
    def _dest_finished_event(self):
        """The destination's SUSPENDED/paused event after the send started (it has the whole guest), or None."""
        if self.events is None or not self.events.available:
            return None
        ev = self.events.first("dest", "suspended", SUSPENDED_PAUSED, after=self.marks.get("send_start"))
        if ev is None:
            return None
        return {
            "ts": ev["ts"],
            "source": "event",
            "what": "lifecycle event SUSPENDED/paused on {}".format(self.dest_name),
        }

    def _dest_finished(self):
        """The destination's 'finished receiving' observation, or None: {'ts', 'source', 'what'}."""
        if self.events is not None and self.events.available:
            return self._dest_finished_event()
        # no events: the destination's state, polled (paused, not by the incoming migration, no job)
        now = self.clock()
        if now - self.marks.get("dest_polled", 0) < 0.05:
            return None
        self.marks["dest_polled"] = now
        try:
            dom = lookup(self.dest, DOMAIN, self.name)
        except VirtError:
            return None
        if dom is None:
            return None
        state, reason = state_reason(dom)
        job = job_type(dom)
        incoming = state == 3 and (reason == PAUSED_MIGRATION or job not in (0, None))
        if incoming and "prepare" not in self.marks:
            self.marks["prepare"] = self.wall()
            leases, ts = self._probed()
            self._record(
                "prepare/register",
                leases=leases,
                host=self.dest_name,
                at=ts,
                source="probe",
                verified_by="state read on {} and lease probe (F_GETLK)".format(self.dest_name),
                ok=self.src.profile.paused_guest_holds_leases or not any(r.get("holder") == "other" for r in leases),
                detail="incoming guest seen paused on {} (migration job, no lease of its own)".format(self.dest_name),
            )
        if state != 3 or incoming:
            return None
        return {"ts": self.wall(), "source": "probe", "what": "state read on {}: paused, no job".format(self.dest_name)}

    def _record_received(self, seen, dest_dom):
        """perform/send: the destination has the whole guest, paused.

        Seen by its SUSPENDED/paused event (no state read before the resume: it would lengthen the guest's
        pause; the event is the evidence) or, without events, by the state read that found it.
        """
        by_state = seen["source"] != "event"
        self._record(
            "perform/send",
            ok=True,
            host=self.dest_name,
            at=seen["ts"],
            source=seen["source"],
            verified=by_state,
            verified_by=seen["what"] if by_state else None,
            detail="{} finished receiving {} ({}); libvirt keeps it paused (VIR_MIGRATE_PAUSED)".format(
                self.dest_name, self.name, seen["what"]
            ),
        )
        self.marks["received"] = seen["ts"]

    # ------------------------------------------------------------------ source released
    def _wait_released(self, phase="perform"):
        """Probe until the source holds none of the guest's leases (up to RELEASE_WAIT); record it."""
        deadline = self.clock() + self.release_wait
        while True:
            leases, ts = self._probed()
            still = [r for r in leases if r.get("holder") == "source"]
            if not still or self.clock() >= deadline:
                break
            self.sleep(0.005)
        ev = None
        if self.events is not None and not self.src.profile.paused_guest_holds_leases:
            # QEMU releases when the vCPUs stop (qemuProcessHandleStop): the stop's event is the release
            ev = self.events.first("source", "suspended", after=self.marks.get("begin"))
        if ev is not None and not still:
            at, source = ev["ts"], "event"
            how = "released when the source's vCPUs stopped (lifecycle event SUSPENDED/{})".format(
                "migrated" if ev["detail"] == SUSPENDED_MIGRATED else ev["detail"]
            )
        else:
            at, source = ts, "probe"
            how = "seen released by the probe" if not still else "still held after {}s".format(self.release_wait)
        self._record(
            "{}/source_released".format(phase),
            ok=not still,
            leases=leases,
            at=at,
            source=source,
            verified_by="lease probe (F_GETLK) at {}".format(iso_utc(ts)),
            detail="{}: {}".format(how, describe(leases, self.src_name, self.dest_name)),
        )
        self.marks["released_probe"] = ts
        return leases, still

    # ------------------------------------------------------------------ resume
    def _hand_over(self, dest_dom, phase="finish", released_phase="perform"):
        """Source released (probed) -> destination resumed -> its leases verified. Raises on failure."""
        leases, still = self._wait_released(released_phase)
        if still and self.plan["verify"]:
            raise LeaseError(
                "{}: {} still holds {} after the send; {} is left paused on {}, not resumed".format(
                    released_phase,
                    self.src_name,
                    describe(still, self.src_name, self.dest_name),
                    self.name,
                    self.dest_name,
                ),
                result=None,
            )
        if self.dest.profile.paused_guest_holds_leases:
            # libxl: the destination took the leases when it created the guest, before it runs
            self._verify_dest(dest_dom, phase, at=None)
            self._resume_dest(dest_dom, phase)
            self._record_resumed(dest_dom, phase)
        else:
            resumed_at = self._resume_dest(dest_dom, phase)
            ev = self._resumed_event()
            self._verify_dest(dest_dom, phase, at=ev["ts"] if ev else resumed_at, source="event" if ev else "api")
            self._record_resumed(dest_dom, phase, ev=ev, resumed_at=resumed_at)

    def _resumed_event(self, timeout=1.0):
        if self.events is None or not self.events.available:
            return None
        return self.events.wait_for("dest", "resumed", timeout=timeout, after=self.marks.get("send_start"))

    def _resume_dest(self, dest_dom, phase):
        lc = Lifecycle(
            self.dest,
            PhaseRecorder(
                self.rec,
                phase,
                {
                    "resumed": None,
                    "running": None,
                    "acquire_failed": "acquire_busy",
                    "resume_failed": "resume_failed",
                    "lease_files_created": None,
                },
                host=self.dest_name,
            ),
            self.lock_config,
            sleep=self.sleep,
            clock=self.clock,
        )
        try:
            try:
                # the fast path: the leases are known and were just probed free, so no XML read first
                with libvirt_errors("cannot resume {} on {}".format(self.name, self.dest_name)):
                    dest_dom.resume()
            except VirtError as first:
                lc.recorder.record("acquire_failed" if first.is_busy else "resume_failed", ok=False, detail=first.msg)
                if not first.is_busy:
                    raise
                lc.resume(dest_dom, required=False, acquire_timeout=self.plan["acquire_timeout"], verify=False)
        except VirtError as err:
            leases, ts = self._probed()
            self._record(
                "{}/dest_acquired".format(phase),
                ok=False,
                leases=leases,
                host=self.dest_name,
                at=ts,
                source="probe",
                verified_by="lease probe (F_GETLK)",
                detail="{} could not resume {}: {}".format(self.dest_name, self.name, err.msg),
            )
            state = self._state_of(self.dest)
            if err.is_busy:
                blocking = [r for r in leases if r.get("held")] or leases
                what = "could not take the leases of {} within lock.acquire_timeout ({}s): {}".format(
                    self.name, self.plan["acquire_timeout"], describe(blocking, self.src_name, self.dest_name)
                )
            else:
                what = "could not resume {}: {}".format(self.name, err.msg)
            raise (LeaseError if err.is_busy else VirtError)(
                "{}: {} {}. {} is {} on {}".format(phase, self.dest_name, what, self.name, state, self.dest_name),
                code=err.code,
                domain=err.domain,
                libvirt_message=err.libvirt_message,
            ) from None
        self.marks["resumed"] = self.wall()
        return self.marks["resumed"]

    def _verify_dest(self, dest_dom, phase, at=None, source="probe"):
        """Probe: every lease held, and not by the source's virtlockd (the probe cannot name the holder)."""
        leases, ts = self._probed()
        bad = [r for r in leases if r.get("holder") != "other"]
        detail = describe(leases, self.src_name, self.dest_name)
        if not bad and leases:
            detail = "held, by someone other than {}'s virtlockd (after {} {}): {}".format(
                self.src_name,
                self.dest_name,
                "created the guest" if self.dest.profile.paused_guest_holds_leases else "resumed the guest",
                detail,
            )
        self._record(
            "{}/dest_acquired".format(phase),
            ok=not bad,
            leases=leases,
            host=self.dest_name,
            at=ts if at is None else at,
            source=source if at is not None else "probe",
            verified_by="lease probe (F_GETLK) at {}".format(iso_utc(ts)),
            detail=detail,
        )
        if bad and self.plan["verify"]:
            state = state_name(dest_dom)
            paused = False
            if state == "running" and not self.dest.profile.paused_guest_holds_leases:
                try:
                    dest_dom.suspend()
                    paused = True
                except Exception:
                    pass
            state = self._state_of(self.dest)
            raise LeaseError(
                "{}: {} does not hold its leases on {} ({}); it is {} on {}{}".format(
                    phase,
                    self.name,
                    self.dest_name,
                    describe(bad, self.src_name, self.dest_name),
                    state,
                    self.dest_name,
                    " (paused again)" if paused and state == "paused" else "",
                )
            )
        return leases

    def _record_resumed(self, dest_dom, phase, ev=None, resumed_at=None):
        if ev is None:
            ev = self._resumed_event()
        state = self._state(self.dest, dest_dom)
        self._record(
            "{}/resumed".format(phase),
            ok=state == "running",
            host=self.dest_name,
            at=ev["ts"] if ev else (resumed_at or self.wall()),
            source="event" if ev else "api",
            verified_by="state read on {}: {}".format(self.dest_name, state),
            detail="{} runs on {}{}".format(
                self.name, self.dest_name, " (lifecycle event RESUMED)" if ev else " (resume returned)"
            )
            if state == "running"
            else "{} is {} on {}".format(self.name, state, self.dest_name),
        )
        self.marks["dest_running"] = ev["ts"] if ev else resumed_at

    # ------------------------------------------------------------------ confirm
    def _confirm(self, phase="confirm", api_error=None):
        """The source has stopped (its copy gone): state read, timed by its STOPPED event when seen."""
        src_dom, stopped = self._wait_inactive(self.src, self.source_stop_wait)
        state = "absent" if src_dom is None else state_name(src_dom)
        ev = None
        if self.events is not None:
            ev = self.events.first("source", "stopped", STOPPED_MIGRATED, after=self.marks.get("begin"))
        detail = "{} on {}: {}".format(self.name, self.src_name, "undefined" if src_dom is None else state)
        if api_error is not None:
            detail += "; the migration call failed: {}".format(api_error.msg)
        self._record(
            "{}/source_stopped".format(phase),
            ok=stopped,
            at=ev["ts"] if (ev and stopped) else None,
            source="event" if (ev and stopped) else "api",
            verified_by="state read on {}: {}".format(self.src_name, "undefined" if src_dom is None else state),
            detail=detail,
        )
        return state, stopped
