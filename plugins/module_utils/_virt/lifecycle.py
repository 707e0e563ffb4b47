# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Starting and stopping guests with their leases made explicit, verified and recorded.

The ordering rule (see docs on lease semantics): a guest takes its leases after it was created and
before its vCPUs run. ``start(acquire='after_create')`` creates the guest paused, resumes it (qemu's
lock manager takes the leases as vCPUs start; libxl's already took them at creation), verifies that
this host's virtlockd holds them and only then reports it running. If taking the leases fails, the
paused guest is destroyed: it holds nothing, so there is nothing to release.

Every step is a checkpoint in the caller's CheckpointRecorder.
"""

from __future__ import annotations

import os
import re
import time

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import LeaseError, VirtError, libvirt_errors
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    describe_holder,
    domain_lease_resources,
    ensure_lease_file,
    own_share,
    probe_resources,
    rw_disks_without_lease,
    share_users,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, read_xml, volume_path
from ansible_collections.lockstep.virt.plugins.module_utils._virt.profiles import LEASES_ON_CREATE

ACQUIRE_AFTER_CREATE = "after_create"
ACQUIRE_LIBVIRT = "libvirt"

STATE_NAMES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}

_BUSY_NAME = re.compile(r"resource '([^']+)' is locked")


def state_name(dom):
    """libvirt state of ``dom`` as a word: running, paused, shutoff, crashed, pmsuspended, ..."""
    with libvirt_errors("cannot read the state of {}".format(dom.name())):
        state, _reason = dom.state()
    return STATE_NAMES.get(state, "unknown")


def is_active(dom):
    with libvirt_errors():
        return bool(dom.isActive())


class Lifecycle:
    """Start, resume, pause, shut down and destroy guests on one connection.

    ``conn``: a Connection; ``recorder``: CheckpointRecorder; ``lock_config``: the host's LockConfig.
    ``sleep``/``clock``/``poll`` are injectable for tests.
    """

    def __init__(
        self, conn, recorder, lock_config, sleep=time.sleep, clock=time.monotonic, poll=0.25, resolve_volume=None
    ):
        self.conn = conn
        self._resolve = resolve_volume
        self.profile = conn.profile
        self.recorder = recorder
        self.lock_config = lock_config
        self.sleep = sleep
        self.clock = clock
        self.poll = poll

    # ------------------------------------------------------------------ leases
    def _resolve_volume(self, pool, volume):
        """The path of a ``type='volume'`` disk (None when it cannot be found)."""
        if self._resolve is not None:
            return self._resolve(pool, volume)
        return volume_path(self.conn, pool, volume)

    def expected_leases(self, dom, inactive=False):
        """The leases the lock manager takes for ``dom`` (unprobed)."""
        root = read_xml(dom, DOMAIN, inactive=inactive)
        return domain_lease_resources(root, self.lock_config, self._resolve_volume)

    def _sharers(self, dom):
        """``sharers(path)``: the other guests here sharing a shareable disk (see leases.share_users)."""
        try:
            name = dom.name()
        except Exception:  # libvirtError: a guest gone meanwhile
            name = None
        return share_users(self.conn.virt, exclude=name, paused_holds=self.profile.paused_guest_holds_leases)

    def probe(self, dom, inactive=False):
        """The domain's leases with held / held_here / holder_pid / lock / sharers."""
        return self._probe_resources(dom, self.expected_leases(dom, inactive))

    def _probe_resources(self, dom, resources):
        return probe_resources(resources, self.lock_config, sharers=self._sharers(dom))

    def precheck(self, dom, required):
        """With ``required``: refuse (before anything runs) a start whose leases cannot be held."""
        resources = self.expected_leases(dom, inactive=not is_active(dom))
        if not required:
            return resources
        cfg = self.lock_config
        if not cfg.local:
            raise LeaseError("lock.required: leases cannot be verified over the remote URI {}".format(self.conn.uri))
        if not cfg.enabled:
            raise LeaseError(
                "lock.required: no lock manager is configured for the {} driver on {} ({} has no "
                "lock_manager), so {} would run without leases".format(
                    self.profile.name, self.conn.hostname, cfg.lock_conf or "its config", dom.name()
                )
            )
        if cfg.manager not in ("lockd", "sanlock"):
            raise LeaseError("lock.required: leases of lock manager {} cannot be verified".format(cfg.manager))
        unleased = rw_disks_without_lease(resources)
        if unleased and not any(r["kind"] == "lease" for r in resources):
            raise LeaseError(
                "lock.required: {} would run with read-write disk(s) {} not leased (auto_disk_leases is off "
                "and the guest has no <lease>)".format(dom.name(), ", ".join(r["disk"] or "?" for r in unleased))
            )
        return resources

    def prepare_vm_leases(self, resources):
        """Create missing ``<lease>`` key files (lockd does not create them). Returns the created paths."""
        created = []
        cfg = self.lock_config
        if not cfg.local or cfg.manager != "lockd":  # without lockd a <lease> is not used
            return created
        for r in resources:
            if r["kind"] != "lease" or not r["resource"]:
                continue
            try:
                if ensure_lease_file(r["resource"]):
                    created.append(r["resource"])
            except OSError as exc:
                raise LeaseError(
                    "cannot create the lease file {}: {}".format(r["resource"], exc.strerror or exc)
                ) from None
        if created:
            self.recorder.record("lease_files_created", resources=created)
        return created

    def verify(self, dom, required, what="leases_verified"):
        """Probe the leases; record ``what``; with ``required`` raise when one is not held here."""
        leases = self.probe(dom)
        wanted = [r for r in leases if r["resource"]]
        names = [r["resource"] for r in wanted]
        cfg = self.lock_config
        if not wanted and not rw_disks_without_lease(leases):
            self.recorder.record(what, ok=True, detail="nothing to lease", source="probe", check=self._check_text())
            return leases, True
        if not cfg.enabled:
            detail = "no lock manager is configured for the {} driver: the guest holds no lease".format(
                self.profile.name
            )
            self.recorder.record(what, ok=False, resources=names, detail=detail, source="probe")
            return leases, False
        if not cfg.probeable:
            self.recorder.record(
                what, ok=False, resources=names, detail="leases cannot be probed from here", source="probe"
            )
            return leases, False
        # a shareable disk: this host's virtlockd holds a shared lock on it (F_GETLK, or its own fds in /proc
        # when another host's share is the one F_GETLK names); other disks and leases: held by it
        missing = [r for r in wanted if not r["held_here"] or (r["shared"] and r.get("lock") != "shared")]
        unleased = rw_disks_without_lease(leases)
        ok = not missing and not unleased
        detail = None
        if missing:
            detail = "; ".join("{}: {}".format(r["resource"], describe_holder(r)) for r in missing)
        elif unleased:
            detail = "read-write disk(s) not leased: " + ", ".join(r["disk"] or "?" for r in unleased)
        else:
            detail = "held by this host's {}".format("sanlock" if cfg.manager == "sanlock" else "virtlockd")
        self.recorder.record(what, ok=ok, resources=names, detail=detail, source="probe", check=self._check_text())
        return leases, ok

    def _check_text(self):
        if self.lock_config.manager == "sanlock":
            return "lease probe (sanlock client status, sanlock direct dump of the lease) on {}".format(
                self.conn.hostname
            )
        return "lease probe (F_GETLK) on {}".format(self.conn.hostname)

    def record_running(self, dom, detail=None):
        """The ``running`` checkpoint, checked by reading the guest's state back."""
        state = state_name(dom)
        self.recorder.record(
            "running",
            ok=state == "running",
            detail="{}state read back: {}".format(detail + "; " if detail else "", state),
            check="domain state read on {}".format(self.conn.hostname),
        )

    # ------------------------------------------------------------------ start
    def _create_paused(self, dom):
        if self.profile.can_start_paused:
            with libvirt_errors("cannot create {} paused".format(dom.name())):
                dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            self.recorder.record("created_paused", detail="vCPUs not started")
        else:
            with libvirt_errors("cannot create {}".format(dom.name())):
                dom.create()
                dom.suspend()
            self.recorder.record(
                "created_paused",
                detail="the {} driver cannot start paused: created, then suspended".format(self.profile.name),
            )

    def _busy_error(self, dom, err, resources, waited):
        m = _BUSY_NAME.search(err.libvirt_message or err.msg or "")
        name = m.group(1) if m else None
        probed = self._probe_resources(dom, resources)
        culprit = None
        for r in probed:
            if (
                name
                and r["resource"]
                and (name in (r["resource"], r.get("key"), os.path.basename(r["resource"]), r.get("path")))
            ):
                culprit = r
                break
        if culprit is None:
            held = [r for r in probed if r.get("held") and not r.get("held_here")]
            culprit = held[0] if held else None
        if culprit is not None:
            what = "lease {} ({})".format(
                culprit["resource"],
                "key {}".format(culprit["key"]) if culprit["kind"] == "lease" else "disk {}".format(culprit["disk"]),
            )
            holder = describe_holder(culprit)
        else:
            what = "lease {}".format(name) if name else "a lease or image lock"
            holder = "held elsewhere"
        waited_txt = " after waiting {:.0f}s".format(waited) if waited else ""
        return LeaseError(
            "cannot start {}: {} is {}{} ({})".format(dom.name(), what, holder, waited_txt, err.msg),
            code=err.code,
            domain=err.domain,
            libvirt_message=err.libvirt_message,
        )

    def _destroy_quietly(self, dom, name, detail):
        try:
            if dom.isActive():
                dom.destroy()
                self.recorder.record(name, detail=detail)
        except Exception as exc:  # libvirtError: report, keep the original error
            self.recorder.record(name, ok=False, detail="could not destroy: {}".format(exc))

    def start(self, dom, acquire=ACQUIRE_AFTER_CREATE, required=False, acquire_timeout=0, verify=True, paused=False):
        """Start ``dom`` (shut off) and return its probed leases.

        ``paused``: leave it paused (a qemu guest then holds no lease). Raises LeaseError/VirtError;
        on failure nothing of this start is left running.
        """
        resources = self.precheck(dom, required)
        self.prepare_vm_leases(resources)
        started_at = self.clock()
        deadline = started_at + max(0, acquire_timeout or 0)
        attempt = 0
        while True:
            attempt += 1
            try:
                if acquire == ACQUIRE_AFTER_CREATE or paused:
                    self._create_paused(dom)
                    if self.profile.leases_taken == LEASES_ON_CREATE:
                        self.recorder.record(
                            "leases_acquired",
                            resources=[r["resource"] for r in resources if r["resource"]],
                            detail="taken at creation by the {} driver".format(self.profile.name),
                        )
                    if paused:
                        self.recorder.record("paused", detail="left paused as requested")
                        return self.probe(dom)
                    with libvirt_errors("cannot resume {}".format(dom.name())):
                        dom.resume()
                    self.recorder.record(
                        "resumed",
                        resources=[r["resource"] for r in resources if r["resource"]],
                        detail="leases taken as vCPUs started",
                    )
                else:
                    with libvirt_errors("cannot start {}".format(dom.name())):
                        dom.create()
                    self.recorder.record("started", detail="started by libvirt in one call")
                break
            except VirtError as err:
                busy = err.is_busy
                self.recorder.record("acquire_failed" if busy else "start_failed", ok=False, detail=err.msg)
                self._destroy_quietly(
                    dom,
                    "destroyed_paused",
                    "its leases, taken at creation by the {} driver, go with it".format(self.profile.name)
                    if self.profile.leases_taken == LEASES_ON_CREATE
                    else "no lease was taken: nothing to release",
                )
                now = self.clock()
                if busy and now < deadline:
                    self.sleep(min(1.0, max(0.05, deadline - now)))
                    continue
                if busy:
                    raise self._busy_error(dom, err, resources, now - started_at if acquire_timeout else 0) from None
                raise
        if verify:
            leases, ok = self.verify(dom, required)
            if not ok and required:
                why = self.recorder.last()["detail"]
                self._destroy_quietly(dom, "rolled_back", "destroyed: leases not held here")
                raise LeaseError(
                    "lock.required: {} started but its leases are not held by this host ({}); it was destroyed".format(
                        dom.name(), why
                    )
                )
        else:
            leases = self.probe(dom)
        self.record_running(dom, "attempts: {}".format(attempt))
        return leases

    def resume(self, dom, required=False, acquire_timeout=0, verify=True, before_retry=None):
        """Resume a paused guest (qemu takes the leases now); the guest stays paused on failure.

        ``before_retry()`` is asked before each retry of a refused acquire; a reason it returns ends the
        retries with a VirtError (a migration asks whether the source took the guest back meanwhile).
        """
        resources = self.precheck(dom, required)
        self.prepare_vm_leases(resources)
        started_at = self.clock()
        deadline = started_at + max(0, acquire_timeout or 0)
        attempt = 0
        while True:
            attempt += 1
            if before_retry is not None and attempt > 1:
                reason = before_retry()
                if reason:
                    raise VirtError(reason)
            try:
                with libvirt_errors("cannot resume {}".format(dom.name())):
                    dom.resume()
                self.recorder.record("resumed", resources=[r["resource"] for r in resources if r["resource"]])
                break
            except VirtError as err:
                self.recorder.record("acquire_failed" if err.is_busy else "resume_failed", ok=False, detail=err.msg)
                now = self.clock()
                if err.is_busy and now < deadline:
                    self.sleep(min(1.0, max(0.05, deadline - now)))
                    continue
                if err.is_busy:
                    raise self._busy_error(dom, err, resources, now - started_at) from None
                raise
        if verify:
            leases, ok = self.verify(dom, required)
            if not ok and required:
                with libvirt_errors("cannot pause {}".format(dom.name())):
                    dom.suspend()
                self.recorder.record("paused", ok=False, detail="paused again: leases not held here")
                raise LeaseError(
                    "lock.required: {} resumed without holding its leases; paused again".format(dom.name())
                )
        else:
            leases = self.probe(dom)
        self.record_running(dom)
        return leases

    def suspend(self, dom):
        held = self.probe(dom)
        with libvirt_errors("cannot pause {}".format(dom.name())):
            dom.suspend()
        self.recorder.record("paused")
        return self._released(dom, held)

    # ------------------------------------------------------------------ stop
    def _released(self, dom, before):
        """Record which leases held here before a stop are no longer held here."""
        was = [r for r in before if r.get("held_here")]
        if not was:
            return self.probe(dom, inactive=not is_active(dom))
        after = self._probe_resources(dom, was)
        # a shareable disk's shared lock stays while another guest here shares it: not this guest's
        still = [r["resource"] for r in after if r.get("held_here") and own_share(r) is not None]
        kept = [r for r in after if r.get("held_here") and own_share(r) is None]
        detail = ("still held here: " + ", ".join(still)) if still else None
        if kept:
            detail = (detail + "; " if detail else "") + "; ".join(
                "shareable disk {}: the shared lock stays for {} sharing it here".format(
                    r.get("disk") or r["resource"], ", ".join(r["sharers"])
                )
                for r in kept
            )
        self.recorder.record(
            "leases_released",
            ok=not still,
            resources=[r["resource"] for r in was],
            detail=detail,
        )
        return self.probe(dom, inactive=not is_active(dom))

    def wait_stopped(self, dom, timeout):
        deadline = self.clock() + max(0, timeout)
        while True:
            if not is_active(dom):
                return True
            now = self.clock()
            if now >= deadline:
                return False
            self.sleep(min(self.poll, deadline - now))

    def shutdown(self, dom, timeout=60, force=False):
        """Graceful shutdown waiting up to ``timeout`` s; then destroy with ``force``, else raise."""
        before = self.probe(dom)
        if state_name(dom) == "paused":
            # its vCPUs do not run, so it cannot act on the ACPI power button (qemu refuses the request)
            if not force:
                raise VirtError(
                    "guest {} is paused: it cannot shut down gracefully; resume it first, or use force: true "
                    "to destroy it".format(dom.name())
                )
            with libvirt_errors("cannot destroy {}".format(dom.name())):
                dom.destroy()
            self.recorder.record("destroyed", detail="forced: a paused guest cannot shut down gracefully")
            return self._released(dom, before)
        with libvirt_errors("cannot shut down {}".format(dom.name())):
            dom.shutdown()
        self.recorder.record("shutdown_requested", detail="timeout {}s".format(timeout))
        if self.wait_stopped(dom, timeout):
            self.recorder.record("stopped")
            return self._released(dom, before)
        if not force:
            self.recorder.record("stop_timeout", ok=False, detail="still running after {}s".format(timeout))
            raise VirtError(
                "guest {} did not stop within {}s (does it handle ACPI shutdown?); use force: true to destroy it "
                "after the timeout".format(dom.name(), timeout)
            )
        self.recorder.record("stop_timeout", ok=False, detail="still running after {}s: destroying".format(timeout))
        with libvirt_errors("cannot destroy {}".format(dom.name())):
            dom.destroy()
        self.recorder.record("destroyed", detail="forced after {}s".format(timeout))
        return self._released(dom, before)

    def destroy(self, dom):
        before = self.probe(dom)
        with libvirt_errors("cannot destroy {}".format(dom.name())):
            dom.destroy()
        self.recorder.record("destroyed")
        return self._released(dom, before)
