# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reconcile: what an interrupted earlier run left behind, found and finished by running the task again.

A run can die anywhere (the module's process killed, the controller gone, the SSH session dropped, a task
timeout). With peer-to-peer migration libvirtd finishes the job on its own, and with the verified handoff
the destination then stays paused and holds no lease: the guest runs nowhere. Before sending, the module
writes a handoff marker into the guest's metadata (it travels with the guest); it is cleared when the
handoff is complete. A re-run therefore finds, from state, job and marker read on both hosts:

- ``job``          a migration job still running: wait for it to end, then look again;
- ``dest_paused``  a paused incoming copy on the destination that has finished receiving (marker, no job),
                   and no active copy on the source: check the leases, resume it there;
- ``both_paused``  the same, with the source paused and waiting for a Confirm that never came (direct
                   mode): resume the destination, then stop the source's copy;
- ``source_paused`` the source paused by a migration (marker or reason), no copy elsewhere: resume it
                   (taking its leases back), then migrate as asked.

Every step is a ``reconcile/...`` checkpoint and the result is ``changed=true``.
"""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import VirtError, libvirt_errors
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import STATE_NAMES, Lifecycle, state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.migration.handoff import (
    PAUSED_MIGRATION,
    job_type,
    state_reason,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration import (
    LifecycleEvents,
    PhaseRecorder,
    describe,
    holders,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.marker import read_marker
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup

JOB_WAIT = 600  # seconds to wait for a migration job an earlier run left running (without a timeout option)


def look(dom):
    """What one host shows of the guest: active, state, reason, job type, handoff marker."""
    if dom is None:
        return {"active": False, "state": "absent", "reason": None, "job": 0, "marker": None}
    try:
        active = bool(dom.isActive())
    except Exception:
        return {"active": None, "state": "unknown", "reason": None, "job": None, "marker": None}
    state, reason = state_reason(dom)
    return {
        "active": active,
        "state": STATE_NAMES.get(state, "unknown"),
        "reason": reason,
        "job": (job_type(dom) or 0) if active else 0,
        "marker": read_marker(dom) if active else None,
    }


def _text(host, seen):
    out = "{}: {}".format(host, seen["state"])
    if seen["state"] == "paused" and seen["reason"] == PAUSED_MIGRATION:
        out += " by a migration"
    if seen["job"]:
        out += ", migration job running"
    if seen["marker"]:
        out += ", handoff marker (resume {})".format(seen["marker"].get("resume"))
    return out


class ReconcilePhase:
    def _leftover(self, src_dom, dest_dom):
        s, d = look(src_dom), look(dest_dom)
        seen = "{}; {}".format(_text(self.src_name, s), _text(self.dest_name, d))
        case = None
        if (s["active"] and s["job"]) or (d["active"] and d["job"] and not s["active"]):
            case = "job"
        else:
            dest_done = (
                d["active"] and d["state"] == "paused" and d["reason"] != PAUSED_MIGRATION and d["marker"] is not None
            )
            if dest_done and not s["active"]:
                case = "dest_paused"
            elif dest_done and s["active"] and s["state"] == "paused":
                case = "both_paused"
            elif (
                s["active"]
                and s["state"] == "paused"
                and not d["active"]
                and (s["marker"] is not None or s["reason"] == PAUSED_MIGRATION)
            ):
                case = "source_paused"
        if case is None:
            return None
        return {"case": case, "detail": seen, "src": s, "dest": d}

    def _reconcile(self, left, src_dom, dest_dom, again=False):
        """Finish or undo what an earlier run left. Returns the result, or None to go on migrating."""
        self.marks["reconciled"] = True
        self.marks.setdefault("begin", self.clock())
        self.sent = True
        if self.events is None and self.use_events:
            factory = self.use_events if callable(self.use_events) else LifecycleEvents
            self.events = factory(self.name, clock=self.clock, wall=self.wall)
            self.events.watch(self.src, "source")
            self.events.watch(self.dest, "dest")
        holder_dom = dest_dom if left["case"] in ("dest_paused", "both_paused") else src_dom
        with libvirt_errors("cannot read the XML of {}".format(self.name)):
            self.resources = self.view.expected(holder_dom.XMLDesc(0))
        leases, ts = self._probed()
        self._record(
            "reconcile/inquire",
            leases=leases,
            at=ts,
            source="probe",
            verified_by="state, job and handoff marker read on both hosts; lease probe (F_GETLK)",
            detail="left by an interrupted run ({}): {}; {}".format(
                left["case"], left["detail"], describe(leases, self.src_name, self.dest_name)
            ),
        )
        try:
            if left["case"] == "job":
                return self._reconcile_job(again)
            if left["case"] == "source_paused":
                self._reconcile_source(src_dom, left)
                return None
            return self._reconcile_dest(src_dom, dest_dom, left)
        except VirtError as err:
            if err.result:
                raise
            msg = err.msg.rstrip(".")
            self._fail(
                "{}{}. Now: {}; run the task again once the cause is gone".format(
                    "" if msg.startswith("reconcile:") else "reconcile: ", msg, self._where_text()
                ),
                changed=True,
                state=self._dest_state_now(),
                leases=self._probe(),
                err=err,
                cls=type(err),
            )

    def _where_text(self):
        return ", ".join("{} is {} on {}".format(self.name, state, host) for host, state in self._where().items())

    def _reconcile_job(self, again):
        deadline = self.clock() + (self.params.get("timeout") or JOB_WAIT)
        while True:
            src_dom = lookup(self.src, DOMAIN, self.name)
            dest_dom = lookup(self.dest, DOMAIN, self.name)
            s, d = look(src_dom), look(dest_dom)
            if not ((s["active"] and s["job"]) or (d["active"] and d["job"] and not s["active"])):
                break
            if self.clock() >= deadline:
                raise VirtError(
                    "a migration job of {} left by an earlier run is still running after {}s".format(
                        self.name, self.params.get("timeout") or JOB_WAIT
                    )
                )
            self.sleep(0.2)
        self._record(
            "reconcile/job_finished",
            source="probe",
            verified_by="job and state read on both hosts",
            detail="{}; {}".format(_text(self.src_name, s), _text(self.dest_name, d)),
        )
        left = self._leftover(src_dom, dest_dom)
        if left is None or again or left["case"] == "job":
            self.sent = False
            return None
        return self._reconcile(left, src_dom, dest_dom, again=True)

    def _reconcile_source(self, src_dom, left):
        """The source was paused by a migration and no copy exists elsewhere: run it again, leased."""
        lc = Lifecycle(
            self.src,
            PhaseRecorder(
                self.rec,
                "reconcile",
                {
                    "resumed": "source_resumed",
                    "acquire_failed": "source_acquire_busy",
                    "resume_failed": "source_resume_failed",
                    "leases_verified": "source_leases",
                    "running": None,
                    "lease_files_created": None,
                },
                host=self.src_name,
            ),
            self.lock_config,
            sleep=self.sleep,
            clock=self.clock,
        )
        lc.resume(src_dom, required=False, acquire_timeout=self.plan["acquire_timeout"], verify=self.plan["verify"])
        if left["src"]["marker"] is not None:
            self._set_marker(self.src, src_dom, None)
        self.sent = False  # nothing sent yet in this run: the migration starts from here
        self.changed_before = True

    def _reconcile_dest(self, src_dom, dest_dom, left):
        """The destination has the whole guest, paused: hand it over there."""
        resume = (left["dest"]["marker"] or {}).get("resume") != "no"
        self.src_state = "running" if resume else "paused"
        if resume:
            self._hand_over(dest_dom, phase="reconcile", released_phase="reconcile")
        else:
            leases, _still = self._wait_released("reconcile")
        if left["case"] == "both_paused":
            with libvirt_errors("cannot stop the source's copy of {}".format(self.name)):
                src_dom.destroy()
                undefined = False
                if self.params.get("undefine_source", True) and src_dom.isPersistent():
                    src_dom.undefine()
                    undefined = True
            self._record(
                "reconcile/source_stopped",
                verified_by="state read on {}: {}".format(self.src_name, self._state_of(self.src)),
                detail="the source's copy (paused, waiting for a Confirm that never came) destroyed{}".format(
                    " and undefined" if undefined else ""
                ),
            )
        elif src_dom is not None and self.params.get("undefine_source", True):
            self.warnings.append(
                "a shut-off definition of {} remains on {} (the interrupted run did not finish it)".format(
                    self.name, self.src_name
                )
            )
        self._set_marker(self.dest, dest_dom, None)
        leases = self._probe()
        state = state_name(dest_dom)
        want = "running" if resume else "paused"
        result = self._result(changed=True, state=state, leases=leases)
        self._timing_reconcile(result)
        if state != want:
            self._fail(
                "reconcile: {} is {} on {}, not {}".format(self.name, state, self.dest_name, want),
                changed=True,
                state=state,
                leases=leases,
            )
        return result

    def _timing_reconcile(self, result):
        if self.events is not None and getattr(self.events, "available", False):
            result["events"] = self.events.as_list()

    # ------------------------------------------------------------------ already there
    def _already_there(self, src_dom, dest_dom):
        with libvirt_errors("cannot read the XML of {}".format(self.name)):
            xml = dest_dom.XMLDesc(0)
        self.resources = self.view.expected(xml)
        leases, ts = self._probed()
        state = state_name(dest_dom)
        self._record(
            "begin/inquire",
            leases=leases,
            host=self.src_name,
            at=ts,
            source="probe",
            ok=state != "running" or not leases or holders(leases) == ["other"],
            verified_by="state read on both hosts; lease probe (F_GETLK)",
            detail="{} already runs on {} ({}) and not on {}: nothing to do; {}".format(
                self.name, self.dest_name, state, self.src_name, describe(leases, self.src_name, self.dest_name)
            ),
        )
        if src_dom is not None:
            self.warnings.append("a shut-off definition of {} remains on {}".format(self.name, self.src_name))
        changed = False
        if read_marker(dest_dom) is not None:
            # an earlier run resumed it but died before clearing the marker
            changed = self._set_marker(self.dest, dest_dom, None)
            self._record(
                "reconcile/marker_cleared",
                ok=changed,
                host=self.dest_name,
                verified=False,
                detail="the handoff marker an interrupted run left on {} removed".format(self.dest_name),
            )
        return self._result(changed=changed or getattr(self, "changed_before", False), state=state, leases=leases)
