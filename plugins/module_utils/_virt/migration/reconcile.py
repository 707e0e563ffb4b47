# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reconcile: finish what an interrupted run left, before anything else (part of the migration manager).

Whatever stopped a run - its process killed, the controller interrupted, the SSH session dropped, a lease
busy past ``lock.acquire_timeout``, a daemon restarted - the same task run again reads both hosts first and
acts only on evidence that a copy is the newest (``evidence.decide``; a lease is never that evidence):

- paused on the destination with the handoff marker, and the source provably finished the migration (shut
  off with reason *migrated*, or its QEMU log's last word since the handoff is ``reason=migrated``): the
  destination is resumed (``reconcile/dest_resumed``, ``reconcile/dest_acquired``);
- running on the destination with the marker: only the marker is left (``reconcile/marker_cleared``);
- running on the destination holding every lease, and paused on the source: the source's stale copy is
  destroyed, as libvirt's confirm step would have done (``reconcile/source_stopped``);
- paused on the source with the marker of a guest that was running, and no definition on a destination the
  send would have made persistent (so its copy never ran): the source is resumed, taking its leases back
  (``reconcile/source_resumed``), and the migration goes on;
- running on the source holding its leases, with a paused copy on the destination that no job is
  receiving: that copy is destroyed (``reconcile/dest_stale_stopped``) and the migration goes on;
- a post-copy that did not finish, or a paused copy nothing proves current: refused with what was seen,
  nothing changed (``reconcile/found`` not ok).

A run still at work (its marker names a live process on this host), or a migration job still active on
either host, is left alone: the task fails and changes nothing.
"""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import LeaseError, VirtError, libvirt_errors
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration import evidence
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.handoff import RESUME_STEPS
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.leaseview import (
    describe,
    held_by_dest,
    not_released,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.marker import owner_alive, read_marker
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup

_JOB_NONE = 0
_ERR_OPERATION_UNSUPPORTED = 84  # VIR_ERR_OPERATION_UNSUPPORTED


def job_active(dom):
    """True when libvirt runs a job (a migration) on ``dom``.

    On the destination of an incoming migration libvirt refuses job statistics ("migration statistics are
    available only on the source host", VIR_ERR_OPERATION_UNSUPPORTED, qemuDomainGetJobStatsInternal):
    that refusal is how an incoming job shows, so it counts as active.
    """
    try:
        return dom.jobInfo()[0] != _JOB_NONE
    except Exception as exc:  # libvirtError
        code = getattr(exc, "get_error_code", lambda: None)()
        text = getattr(exc, "get_error_message", lambda: "")() or str(exc)
        return code == _ERR_OPERATION_UNSUPPORTED and "only on the source host" in text


class Reconcile:
    """What an earlier run left; mixed into MigrationManager."""

    def _copy(self, dom, host):
        with libvirt_errors("cannot read the state of {} on {}".format(self.name, host)):
            return evidence.read_copy(dom, host, read_marker, job_active)

    def _guard_busy(self, src_dom, dest_dom):
        """Refuse (changing nothing) while another run or a migration job is at work on this guest."""
        for dom, host in ((src_dom, self.src_name), (dest_dom, self.dest_name)):
            if dom is None or not self._active(dom):
                continue
            marker = read_marker(dom)
            if marker and owner_alive(marker, self.src.hostname):
                self._fail(
                    "begin: another run (pid {}) is migrating {} from {} to {} right now; nothing was changed".format(
                        marker["pid"], self.name, marker["source"], marker["dest"]
                    )
                )
            if job_active(dom):
                self._fail("begin: a migration job of {} is active on {}; nothing was changed".format(self.name, host))

    def _reconcile(self, src_dom, dest_dom):
        """A finished result when the earlier run is completed here, else None (the migration goes on).

        May resume the source (the migration then goes on from a running guest) or remove a stale copy.
        """
        src = self._copy(src_dom, self.src_name)
        dest = self._copy(dest_dom, self.dest_name)
        if not src.active and not dest.active:
            return None
        self._guard_busy(src_dom, dest_dom)
        log_stop = None
        if dest.state == "paused" and src.state == "absent" and dest.marker and self.src.local:
            log_stop = self.source_log(self.name, dest.marker.get("started"))
        verdict = evidence.decide(src, dest, log_stop)
        action = verdict.action
        if action == evidence.GO_ON:
            return None
        if action in (evidence.RESUME_DEST, evidence.COMPLETE):
            return self._finish_on_dest(dest_dom, dest.state, dest.marker, verdict)
        if action == evidence.STOP_STALE_SOURCE:
            return self._stop_stale_source(src_dom, dest_dom)
        if action == evidence.RESUME_SOURCE:
            self._resume_source(src_dom, verdict)
            return None
        if action == evidence.STOP_STALE_DEST:
            self._stop_stale_dest(dest_dom)
            return None
        return self._refuse(src, dest, verdict)

    def _refuse(self, src, dest, verdict):
        """A post-copy that did not finish, or a paused copy that nothing proves current: say so, change
        nothing."""
        runs = "running" in (src.state, dest.state)
        self._record(
            "reconcile/found",
            ok=False,
            host=dest.host if dest.active else src.host,
            source="api",
            check="domain states, reasons and handoff marker read on both hosts: " + verdict.evidence,
            detail=verdict.reason,
        )
        if verdict.action == evidence.POSTCOPY_FAILED:
            self.outcome = "postcopy_failed"
            advice = (
                "recover it with libvirt's post-copy recovery (virsh migrate --postcopy --postcopy-resume) while "
                "both copies exist"
            )
        elif dest.state == "paused":
            advice = (
                "if you know it did not run on {0} since {2}, resume it on {1} (lockstep.virt.domain state=running "
                "there); else destroy that copy and start the guest on {0}".format(
                    src.host, dest.host, (dest.marker or {}).get("started")
                )
            )
        else:
            advice = (
                "if you know {1} never ran it, resume it on {0}; else destroy the paused copy on {0} and start the "
                "guest on {1}".format(src.host, dest.host)
            )
        self._fail(
            "reconcile: {} is {} on {} and {} on {}: {} ({}). Nothing was changed{}; {}".format(
                self.name,
                src.state,
                src.host,
                dest.state,
                dest.host,
                verdict.reason,
                verdict.evidence,
                "" if runs else " and it runs nowhere",
                advice,
            ),
            state=dest.state if dest.active else src.state,
        )

    def _source_took_it_back(self):
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

    def _found(self, detail, host):
        self._record(
            "reconcile/found", host=host, source="probe", check="domain states and handoff marker read", detail=detail
        )

    def _finish_on_dest(self, dest_dom, dest_state, marker, verdict):
        with libvirt_errors("cannot read the XML of {}".format(self.name)):
            self.resources = self.view.expected(dest_dom.XMLDesc(0))
        self._found(
            "{} is {} on {} with the marker of a handoff from {} started {} that did not finish".format(
                self.name, dest_state, self.dest_name, marker.get("source"), marker.get("started")
            ),
            self.dest_name,
        )
        if verdict.action == evidence.RESUME_DEST:
            self._record(
                "reconcile/source_finished",
                host=self.src_name,
                source="api",
                check=verdict.evidence,
                detail="{} finished the migration of {}: the copy on {} is the newest".format(
                    self.src_name, self.name, self.dest_name
                ),
            )
            leases = self._probe()
            held = [r for r in leases if not_released(r)]
            if held:
                self._fail(
                    "reconcile: {} is paused on {} and runs nowhere, but {} still holds {}; nothing was changed".format(
                        self.name, self.dest_name, self.src_name, describe(held, self.src_name, self.dest_name)
                    ),
                    state="paused",
                    leases=leases,
                    cls=LeaseError,
                )
            lc = self._lifecycle("dest", "reconcile", RESUME_STEPS, resumed="dest_resumed")
            try:
                lc.resume(
                    dest_dom,
                    required=False,
                    acquire_timeout=self.plan["acquire_timeout"],
                    verify=False,
                    before_retry=self._source_took_it_back,
                )
            except VirtError as err:
                leases = self._probe()
                self._fail(
                    "reconcile: {} could not resume {} ({}); it stays paused there and runs nowhere: {}".format(
                        self.dest_name, self.name, err.msg, describe(leases, self.src_name, self.dest_name)
                    ),
                    changed=False,
                    state=state_name(dest_dom),
                    leases=leases,
                    err=err,
                    cls=LeaseError if err.is_busy else VirtError,
                )
        leases = self._probe()
        state = state_name(dest_dom)
        bad = [r for r in leases if not held_by_dest(r)] if state == "running" else []
        self._record(
            "reconcile/dest_acquired",
            ok=not bad,
            leases=leases,
            host=self.dest_name,
            source="probe",
            check=self._probe_check(),
            detail="{} is {} on {}; {}".format(
                self.name, state, self.dest_name, describe(leases, self.src_name, self.dest_name)
            ),
        )
        self._clear_marker(dest_dom)
        self._record(
            "reconcile/marker_cleared", host=self.dest_name, detail="the handoff of {} is complete".format(self.name)
        )
        result = self._result(changed=True, state=state, leases=leases)
        if bad:
            self._fail(
                "reconcile: {} runs on {} without holding its leases: {}".format(
                    self.name, self.dest_name, describe(bad, self.src_name, self.dest_name)
                ),
                changed=True,
                state=state,
                leases=leases,
                cls=LeaseError,
            )
        return result

    def _stop_stale_source(self, src_dom, dest_dom):
        with libvirt_errors("cannot read the XML of {}".format(self.name)):
            self.resources = self.view.expected(dest_dom.XMLDesc(0))
        leases = self._probe()
        if not leases or any(not held_by_dest(r) for r in leases):
            self._fail(
                "reconcile: {} runs on {} and is paused on {}, and the leases are not all held away from {} ({}); "
                "refusing to touch either copy".format(
                    self.name,
                    self.dest_name,
                    self.src_name,
                    self.src_name,
                    describe(leases, self.src_name, self.dest_name),
                ),
                state="running",
                leases=leases,
            )
        self._found(
            "{} runs on {} holding its leases and a paused copy stayed on {}: the source was never confirmed".format(
                self.name, self.dest_name, self.src_name
            ),
            self.src_name,
        )
        with libvirt_errors("cannot stop the stale copy of {} on {}".format(self.name, self.src_name)):
            src_dom.destroy()
            if self.params.get("undefine_source", True) and src_dom.isPersistent():
                src_dom.undefine()
        self._record(
            "reconcile/source_stopped",
            check="domain state read on {}".format(self.src_name),
            detail="the paused copy on {} was destroyed{}".format(
                self.src_name, " and undefined" if self.params.get("undefine_source", True) else ""
            ),
        )
        marker = read_marker(dest_dom)
        if marker is not None:
            self._clear_marker(dest_dom)
        return self._result(changed=True, state=state_name(dest_dom), leases=self._probe())

    def _resume_source(self, src_dom, verdict):
        self._record(
            "reconcile/found",
            host=self.src_name,
            source="api",
            check="domain states and handoff marker read on both hosts: " + verdict.evidence,
            detail="{} is paused on {} with the marker of a handoff to {} whose copy never ran there".format(
                self.name, self.src_name, self.dest_name
            ),
        )
        lc = self._lifecycle("source", "reconcile", RESUME_STEPS, resumed="source_resumed")
        try:
            lc.resume(src_dom, required=False, acquire_timeout=self.plan["acquire_timeout"], verify=False)
        except VirtError as err:
            self._fail(
                "reconcile: {} could not resume {} ({}); it stays paused and runs nowhere".format(
                    self.src_name, self.name, err.msg
                ),
                state="paused",
                err=err,
                cls=LeaseError if err.is_busy else VirtError,
            )
        self.reconciled = True

    def _stop_stale_dest(self, dest_dom):
        leases = self._probe()
        if any(r.get("holder") != "source" for r in leases):
            return  # the preflight's source_holds_leases check reports it
        self._found(
            "{} runs on {} holding its leases; a paused copy left by an earlier handoff stays on {}".format(
                self.name, self.src_name, self.dest_name
            ),
            self.dest_name,
        )
        with libvirt_errors("cannot stop the stale copy of {} on {}".format(self.name, self.dest_name)):
            dest_dom.destroy()
        self._record(
            "reconcile/dest_stale_stopped",
            host=self.dest_name,
            check="lease probe: every lease held by {}'s virtlockd".format(self.src_name),
            detail="the paused copy on {} was destroyed".format(self.dest_name),
        )
        self.reconciled = True
