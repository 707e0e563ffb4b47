# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reconcile: finish what an interrupted run left, before anything else.

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
from ansible_collections.lockstep.virt.plugins.module_utils._virt.handoff_marker import owner_alive, read_marker
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration import evidence
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.handoff import RESUME_STEPS
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.leaseview import (
    describe,
    dest_holds,
    not_released,
    source_keeps,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup

_JOB_NONE = 0
_ERR_OPERATION_UNSUPPORTED = 84  # VIR_ERR_OPERATION_UNSUPPORTED
_ERR_NO_DOMAIN = 42  # VIR_ERR_NO_DOMAIN


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
    """What an earlier run left, read and acted on before anything else.

    ``source_log(name, since)`` reads what the source's QEMU log says happened to the guest since a handoff
    began (:func:`evidence.last_stop_in_log`).
    """

    def __init__(self, run, source_log):
        self.run = run
        self.source_log = source_log

    def _copy(self, dom, host):
        try:
            with libvirt_errors("cannot read the state of {} on {}".format(self.run.name, host)):
                return evidence.read_copy(dom, host, read_marker, job_active)
        except VirtError as err:
            if err.code != _ERR_NO_DOMAIN:
                raise
            # it went away after it was looked up (another run's confirm undefined it): read it again
            conn = self.run.src if host == self.run.src_name else self.run.dest
            with libvirt_errors("cannot read the state of {} on {}".format(self.run.name, host)):
                return evidence.read_copy(lookup(conn, DOMAIN, self.run.name), host, read_marker, job_active)

    def guard_busy(self, src_dom, dest_dom, jobs=True):
        """Refuse (changing nothing) while another run or a migration job is at work on this guest; with
        ``jobs=False`` a migration job alone is no reason (the job libvirt keeps after a failed post-copy, for
        its recovery)."""
        for dom, host in ((src_dom, self.run.src_name), (dest_dom, self.run.dest_name)):
            if dom is None or not self.run.active(dom):
                continue
            marker = read_marker(dom)
            if marker and owner_alive(marker, self.run.src.hostname):
                raise self.run.failure(
                    "begin: another run (pid {}) is migrating {} from {} to {} right now; nothing was changed".format(
                        marker["pid"], self.run.name, marker["source"], marker["dest"]
                    )
                )
            if jobs and job_active(dom):
                raise self.run.failure(
                    "begin: a migration job of {} is active on {}; nothing was changed".format(self.run.name, host)
                )

    def reconcile(self, src_dom, dest_dom):
        """A finished result when the earlier run is completed here, else None (the migration goes on).

        May resume the source (the migration then goes on from a running guest) or remove a stale copy.
        """
        src = self._copy(src_dom, self.run.src_name)
        dest = self._copy(dest_dom, self.run.dest_name)
        if not src.active and not dest.active:
            return None
        log_stop = None
        if dest.state == "paused" and src.state == "absent" and dest.marker and self.run.src.local:
            log_stop = self.source_log(self.run.name, dest.marker.get("started"))
        verdict = evidence.decide(src, dest, log_stop)
        # libvirt keeps the incoming job of a failed post-copy (for its recovery): that job is what the verdict
        # reports, not another migration at work
        self.guard_busy(src_dom, dest_dom, jobs=verdict.action != evidence.POSTCOPY_FAILED)
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
        self.run.record(
            "reconcile/found",
            ok=False,
            host=dest.host if dest.active else src.host,
            source="api",
            check="domain states, reasons and handoff marker read on both hosts: " + verdict.evidence,
            detail=verdict.reason,
        )
        if verdict.action == evidence.POSTCOPY_FAILED and not src.active:
            self.run.outcome = "postcopy_failed"
            advice = (
                "{} has no running copy left, so the pages that stayed there are lost and libvirt's post-copy "
                "recovery cannot help: destroy the copy on {} and start the guest again from its disks".format(
                    src.host, dest.host
                )
            )
        elif verdict.action == evidence.POSTCOPY_FAILED:
            self.run.outcome = "postcopy_failed"
            advice = (
                "recover it with libvirt's post-copy recovery (virsh migrate --postcopy --postcopy-resume) while "
                "both copies exist"
            )
        elif dest.state == "paused" and src.state == "paused":
            advice = (
                "if you know the guest did not run on {1} since {2}, destroy the copy on {1} and resume it on {0} "
                "(its copy is whole); else destroy the copy on {0} and resume it on {1}".format(
                    src.host, dest.host, (dest.marker or {}).get("started")
                )
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
        raise self.run.failure(
            "reconcile: {} is {} on {} and {} on {}: {} ({}). Nothing was changed{}; {}".format(
                self.run.name,
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

    def _found(self, detail, host):
        self.run.record(
            "reconcile/found", host=host, source="probe", check="domain states and handoff marker read", detail=detail
        )

    def _finish_on_dest(self, dest_dom, dest_state, marker, verdict):
        with libvirt_errors("cannot read the XML of {}".format(self.run.name)):
            self.run.resources = self.run.view.expected(dest_dom.XMLDesc(0))
        self._found(
            "{} is {} on {} with the marker of a handoff from {} started {} that did not finish".format(
                self.run.name, dest_state, self.run.dest_name, marker.get("source"), marker.get("started")
            ),
            self.run.dest_name,
        )
        if verdict.action == evidence.RESUME_DEST:
            self.run.record(
                "reconcile/source_finished",
                host=self.run.src_name,
                source="api",
                check=verdict.evidence,
                detail="{} finished the migration of {}: the copy on {} is the newest".format(
                    self.run.src_name, self.run.name, self.run.dest_name
                ),
            )
            leases = self.run.probe()
            held = [r for r in leases if not_released(r)]
            if held:
                raise self.run.failure(
                    "reconcile: {} is paused on {} and runs nowhere, but {} still holds {}; nothing was changed".format(
                        self.run.name,
                        self.run.dest_name,
                        self.run.src_name,
                        describe(held, self.run.src_name, self.run.dest_name),
                    ),
                    state="paused",
                    leases=leases,
                    cls=LeaseError,
                )
            lc = self.run.lifecycle("dest", "reconcile", RESUME_STEPS, resumed="dest_resumed")
            try:
                self.run.resume_destination(lc, dest_dom)
            except VirtError as err:
                leases = self.run.probe()
                raise self.run.failure(
                    "reconcile: {} could not resume {} ({}); it stays paused there and runs nowhere: {}".format(
                        self.run.dest_name,
                        self.run.name,
                        err.msg,
                        describe(leases, self.run.src_name, self.run.dest_name),
                    ),
                    changed=False,
                    state=state_name(dest_dom),
                    leases=leases,
                    err=err,
                    cls=LeaseError if err.is_busy else VirtError,
                ) from None
        leases = self.run.probe()
        state = state_name(dest_dom)
        bad = [r for r in leases if not dest_holds(r)] if state == "running" else []
        self.run.record(
            "reconcile/dest_acquired",
            ok=not bad,
            leases=leases,
            host=self.run.dest_name,
            source="probe",
            check=self.run.probe_check(),
            detail="{} is {} on {}; {}".format(
                self.run.name, state, self.run.dest_name, describe(leases, self.run.src_name, self.run.dest_name)
            ),
        )
        self.run.clear_marker(dest_dom)
        self.run.record(
            "reconcile/marker_cleared",
            host=self.run.dest_name,
            detail="the handoff of {} is complete".format(self.run.name),
        )
        result = self.run.result(changed=True, state=state, leases=leases)
        if bad:
            raise self.run.failure(
                "reconcile: {} runs on {} without holding its leases: {}".format(
                    self.run.name, self.run.dest_name, describe(bad, self.run.src_name, self.run.dest_name)
                ),
                changed=True,
                state=state,
                leases=leases,
                cls=LeaseError,
            )
        return result

    def _stop_stale_source(self, src_dom, dest_dom):
        with libvirt_errors("cannot read the XML of {}".format(self.run.name)):
            self.run.resources = self.run.view.expected(dest_dom.XMLDesc(0))
        leases = self.run.probe()
        if not leases or any(not dest_holds(r) for r in leases):
            raise self.run.failure(
                "reconcile: {} runs on {} and is paused on {}, and the leases are not all held away from {} ({}); "
                "refusing to touch either copy".format(
                    self.run.name,
                    self.run.dest_name,
                    self.run.src_name,
                    self.run.src_name,
                    describe(leases, self.run.src_name, self.run.dest_name),
                ),
                state="running",
                leases=leases,
            )
        self._found(
            "{} runs on {} holding its leases and a paused copy stayed on {}: the source was never confirmed".format(
                self.run.name, self.run.dest_name, self.run.src_name
            ),
            self.run.src_name,
        )
        with libvirt_errors("cannot stop the stale copy of {} on {}".format(self.run.name, self.run.src_name)):
            src_dom.destroy()
            if self.run.params.get("undefine_source", True) and src_dom.isPersistent():
                src_dom.undefine()
        self.run.record(
            "reconcile/source_stopped",
            check="domain state read on {}".format(self.run.src_name),
            detail="the paused copy on {} was destroyed{}".format(
                self.run.src_name, " and undefined" if self.run.params.get("undefine_source", True) else ""
            ),
        )
        marker = read_marker(dest_dom)
        if marker is not None:
            self.run.clear_marker(dest_dom)
        return self.run.result(changed=True, state=state_name(dest_dom), leases=self.run.probe())

    def _resume_source(self, src_dom, verdict):
        self.run.record(
            "reconcile/found",
            host=self.run.src_name,
            source="api",
            check="domain states and handoff marker read on both hosts: " + verdict.evidence,
            detail="{} is paused on {} with the marker of a handoff to {} whose copy never ran there".format(
                self.run.name, self.run.src_name, self.run.dest_name
            ),
        )
        lc = self.run.lifecycle("source", "reconcile", RESUME_STEPS, resumed="source_resumed")
        try:
            lc.resume(src_dom, required=False, acquire_timeout=self.run.plan.acquire_timeout, verify=False)
        except VirtError as err:
            raise self.run.failure(
                "reconcile: {} could not resume {} ({}); it stays paused and runs nowhere".format(
                    self.run.src_name, self.run.name, err.msg
                ),
                state="paused",
                err=err,
                cls=LeaseError if err.is_busy else VirtError,
            ) from None
        self.run.reconciled = True

    def _stop_stale_dest(self, dest_dom):
        leases = self.run.probe()
        if any(not source_keeps(r) for r in leases):
            return  # the preflight's source_holds_leases check reports it
        self._found(
            "{} runs on {} holding its leases; a paused copy left by an earlier handoff stays on {}".format(
                self.run.name, self.run.src_name, self.run.dest_name
            ),
            self.run.dest_name,
        )
        with libvirt_errors("cannot stop the stale copy of {} on {}".format(self.run.name, self.run.dest_name)):
            dest_dom.destroy()
        self.run.record(
            "reconcile/dest_stale_stopped",
            host=self.run.dest_name,
            check="lease probe: every lease held by {}'s virtlockd".format(self.run.src_name),
            detail="the paused copy on {} was destroyed".format(self.run.dest_name),
        )
        self.run.reconciled = True
