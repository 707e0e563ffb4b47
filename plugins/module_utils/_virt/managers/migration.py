# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration manager: a live migration whose lease handoff is explicit, verified and recorded.

``lock.release: after_send`` (the default), successful run::

    begin/inquire           source: guest running, its leases held by the source's virtlockd
    prepare/register        destination: incoming guest created paused, registered, holding no lease
    perform/send            the guest was sent; libvirt kept the destination paused (VIR_MIGRATE_PAUSED)
    perform/source_released the source holds none of the guest's leases (verified)
    finish/dest_acquired    the destination resumed and holds every lease, not the source (verified)
    finish/resumed          the guest runs on the destination
    confirm/source_stopped  no copy is left running on the source

A send failure records perform/send (failed), finish/dest_clean (no domain, no lease on the destination)
and confirm/source_kept (still running on the source with its leases). A destination that cannot take a
lease within ``acquire_timeout`` records finish/acquire_busy (each refused attempt) and a failed
finish/dest_acquired, then confirm/source_stopped: the guest is left paused on the destination, running
nowhere. ``before_send`` releases on the source first (perform/source_paused, perform/source_released),
and after a failed send has to take the leases back (confirm/source_reacquired or
confirm/source_reacquire_busy).

It never calls exit_json/fail_json: :meth:`MigrationManager.run` returns the result or raises VirtError
carrying the partial result.
"""

from __future__ import annotations

import threading
import time

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import CheckpointRecorder
from ansible_collections.lockstep.virt.plugins.module_utils._virt.connection import Connection
from ansible_collections.lockstep.virt.plugins.module_utils._virt.convergence import (
    ConvergenceMonitor,
    describe_plan,
    plan_convergence,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    LeaseError,
    ValidationError,
    VirtError,
    from_libvirt_error,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    domain_disks,
    read_lock_config,
    rw_disks_without_lease,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import Lifecycle, state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration import (
    RELEASE_BEFORE_SEND,
    LeaseView,
    LifecycleEvents,
    PhaseRecorder,
    build_plan,
    describe,
    holders,
    job_summary,
    lease_summary,
    ms_between,
    public_leases,
    start_event_loop,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, parse_xml

# libvirt lifecycle event details
_STARTED_MIGRATED = 1
_SUSPENDED_MIGRATED = 1
_SUSPENDED_POSTCOPY = 7
_RESUMED_POSTCOPY = 3

DEST_CLEANUP_TIMEOUT = 20  # seconds the destination gets to remove a half-received guest
STATS_EVERY = 0.25  # seconds between job statistics reads when convergence is controlled
_MEMORY_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3}
_MEMORY_UNITS.update({"kb": 1000, "mb": 1000**2, "gb": 1000**3})


def host_uuid(conn):
    with libvirt_errors("cannot read the capabilities of {}".format(conn.uri)):
        caps = parse_xml(conn.virt.getCapabilities(), "capabilities", "libvirt capabilities")
    host = elements(caps, "host")
    uuid = elements(host[0], "uuid") if host else []
    return (uuid[0].text or "").strip() if uuid else None


class MigrationManager:
    """Migrate ``params['name']`` from ``params['uri']`` to ``params['dest_uri']``.

    ``open_conn(uri)`` opens a Connection; ``lease_view(lock_config)`` gives the LeaseView (both
    injectable for tests, as are ``sleep``/``clock``). ``events``: watch libvirt lifecycle events.
    """

    def __init__(
        self,
        params,
        check_mode=False,
        open_conn=Connection,
        lease_view=LeaseView,
        events=True,
        sleep=time.sleep,
        clock=time.monotonic,
        read_config=read_lock_config,
    ):
        self.params = params
        self.check_mode = check_mode
        self.open_conn = open_conn
        self.lease_view_factory = lease_view
        self.use_events = events
        self.sleep = sleep
        self.clock = clock
        self.read_config = read_config
        self.name = params["name"]
        self.warnings = []
        self.src = self.dest = None
        self.src_name = self.dest_name = None
        self.rec = None
        self.events = None
        self.plan = None
        self.checks = []
        self.resources = []
        self.marks = {}
        self.job = {}
        self._lock = threading.Lock()
        self._send_done = False
        self.monitor = None
        self.outcome = None

    # ------------------------------------------------------------------ plumbing
    def run(self):
        try:
            return self._run()
        finally:
            if self.events is not None:
                self.events.close()
            for conn in (self.dest, self.src):
                if conn is not None:
                    conn.close()

    def _result(self, changed=False, state=None, leases=None):
        out = {
            "changed": changed,
            "name": self.name,
            "source": self.src_name,
            "dest": self.dest_name,
            "state": state,
            "lock_checkpoints": self.rec.as_list() if self.rec is not None else [],
            "lease_gap_ms": None,
            "downtime_ms": None,
            "timing_source": None,
            "job": self.job,
            "plan": self.plan,
            "checks": self.checks,
        }
        if leases is not None:
            out["leases"] = public_leases(leases)
        if self.monitor is not None:
            progress = self.monitor.report()
            progress["steps"] = list(self.monitor.steps)
            progress["action"] = dict(self.monitor.action) if self.monitor.action else None
            out["progress"] = progress
        if self.outcome is not None:
            out["outcome"] = self.outcome
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def _fail(self, msg, changed=False, state=None, leases=None, err=None, cls=VirtError):
        result = self._result(changed=changed, state=state, leases=leases)
        self._timing(result)
        if err is not None:
            raise cls(msg, code=err.code, domain=err.domain, libvirt_message=err.libvirt_message, result=result)
        raise cls(msg, result=result)

    def _record(self, name, ok=True, leases=None, detail=None, host=None):
        with self._lock:
            item = self.rec.record(
                name, ok=ok, resources=[r["resource"] for r in leases or []], detail=detail, host=host
            )
            if leases is not None:
                item["leases"] = lease_summary(leases)
            return item

    def _probe(self):
        return self.view.probe(self.resources)

    def _state(self, conn, dom):
        if dom is None:
            return "absent"
        return state_name(dom)

    # ------------------------------------------------------------------ run
    def _run(self):
        if self.use_events:
            self.use_events = start_event_loop()  # before any connection is opened
        self.src = self.open_conn(self.params.get("uri"))
        profile = self.src.profile
        self.plan = build_plan(self.params, profile)
        if self.plan["release"] == RELEASE_BEFORE_SEND:
            self.warnings.append(
                "lock.release: before_send reproduces the old ordering: the source releases its leases before the "
                "guest is sent and must take them back if the send fails, which can fail while the destination "
                "still holds them. Use it only to reproduce that failure."
            )
        self.src_name = self.src.hostname
        try:
            self.dest = self.open_conn(self.params["dest_uri"])
        except VirtError as err:
            self.dest = None
            raise ValidationError(
                "cannot reach the destination {}: {}".format(self.params["dest_uri"], err.libvirt_message or err.msg),
                code=err.code,
                domain=err.domain,
                libvirt_message=err.libvirt_message,
                result=self._result(),
            ) from None
        self.dest_name = self.dest.hostname
        src_uuid, dest_uuid = host_uuid(self.src), host_uuid(self.dest)
        if src_uuid and src_uuid == dest_uuid:
            self._fail(
                "the destination {} is the source host {} (same host UUID {}): nothing to migrate".format(
                    self.params["dest_uri"], self.src_name, src_uuid
                ),
                cls=ValidationError,
            )
        self.lock_config = self.read_config(profile, local=self.src.local)
        self.view = self.lease_view_factory(self.lock_config, resolve_volume=self._resolve_volume)
        self.rec = CheckpointRecorder(host=self.src_name)

        src_dom = lookup(self.src, DOMAIN, self.name)
        dest_dom = lookup(self.dest, DOMAIN, self.name)
        src_active = src_dom is not None and self._active(src_dom)
        dest_active = dest_dom is not None and self._active(dest_dom)
        if dest_active and not src_active:
            return self._already_there(src_dom, dest_dom)
        if src_dom is None:
            self._fail(
                "guest {} not found on {} (nor running on {})".format(self.name, self.src_name, self.dest_name),
                cls=ValidationError,
            )
        if not src_active:
            self._fail(
                "guest {} is not running on {} (state {}); only running or paused guests are migrated".format(
                    self.name, self.src_name, state_name(src_dom)
                ),
                cls=ValidationError,
            )
        if dest_active:
            self._fail(
                "guest {} runs on both {} and {}: refusing to touch it".format(self.name, self.src_name, self.dest_name)
            )

        with libvirt_errors("cannot read the XML of {}".format(self.name)):
            xml = src_dom.XMLDesc(0)
        self.resources = self.view.expected(xml)
        self.src_state = state_name(src_dom)
        if self.plan.get("convergence") is not None:
            self._plan_convergence(src_dom, xml)
        leases = self._probe()
        self._checks(xml, dest_dom, leases)
        failed = [c for c in self.checks if not c["ok"]]
        if failed:
            self._fail(
                "{}migration of {} from {} to {} would fail: {}".format(
                    "check mode: " if self.check_mode else "",
                    self.name,
                    self.src_name,
                    self.dest_name,
                    "; ".join("{}: {}".format(c["name"], c["detail"]) for c in failed),
                ),
                leases=leases,
                state=self._state(self.dest, dest_dom),
            )
        if self.check_mode:
            result = self._result(
                changed=True, state="paused" if self.src_state == "paused" else "running", leases=leases
            )
            result["would"] = "migrate {} from {} to {} with flags {}; checkpoints {}".format(
                self.name,
                self.src_name,
                self.dest_name,
                "|".join(self.plan["flags"]),
                ", ".join(self._expected_order()),
            )
            if self.plan.get("convergence_plan"):
                result["would"] += "; convergence: " + describe_plan(self.plan["convergence_plan"])
            return result
        return self._migrate(src_dom, leases)

    def _expected_order(self):
        from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration import checkpoint_order

        return checkpoint_order(self.plan["release"], self.plan["handoff"])

    def _plan_convergence(self, src_dom, xml):
        """The downtime ramp and timeouts for this guest's size (memory, plus the disks a copy moves)."""
        root = parse_xml(xml, "domain", "libvirt's domain XML")
        memory = 0
        for el in elements(root, "memory")[:1]:
            unit = (el.get("unit") or "KiB").lower()
            memory = int((el.text or "0").strip()) * _MEMORY_UNITS.get(unit, 1024)
        disk_bytes = 0
        if self.params.get("copy_storage") not in (None, "none"):
            for disk in domain_disks(root):
                if disk.get("readonly") or disk.get("shareable") or not disk.get("target"):
                    continue
                try:
                    disk_bytes += src_dom.blockInfo(disk["target"])[1]
                except Exception:
                    pass
        conv_plan = plan_convergence(self.plan["convergence"], memory, disk_bytes, live=self.params.get("live", True))
        self.warnings.extend(conv_plan.pop("warnings"))
        self.plan["convergence_plan"] = conv_plan

    def _active(self, dom):
        with libvirt_errors("cannot read the state of {}".format(self.name)):
            return bool(dom.isActive())

    def _resolve_volume(self, pool, volume):
        try:
            return self.src.virt.storagePoolLookupByName(pool).storageVolLookupByName(volume).path()
        except Exception:
            return None

    # ------------------------------------------------------------------ checks
    def _check(self, name, ok, detail):
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})

    def _checks(self, xml, dest_dom, leases):
        root = parse_xml(xml, "domain", "libvirt's domain XML")
        if dest_dom is not None:
            try:
                same = dest_dom.UUIDString() == parse_xml(xml, "domain").findtext("uuid")
            except Exception:
                same = False
            self._check(
                "dest_name_free",
                same,
                "{} has a shut-off definition of {}{}".format(
                    self.dest_name, self.name, "" if same else " with another UUID"
                ),
            )
        devices = elements(root, "devices")
        networks, pools, volumes = [], [], []
        if devices:
            for iface in elements(devices[0], "interface"):
                src = elements(iface, "source")
                if iface.get("type") == "network" and src and src[0].get("network"):
                    networks.append(src[0].get("network"))
        for disk in domain_disks(root):
            if disk["pool"]:
                pools.append(disk["pool"])
                volumes.append((disk["pool"], disk["volume"]))
        for net in sorted(set(networks)):
            try:
                active = bool(self.dest.virt.networkLookupByName(net).isActive())
                self._check(
                    "dest_network",
                    active,
                    "network {} on {} is {}".format(net, self.dest_name, "active" if active else "not active"),
                )
            except Exception:
                self._check("dest_network", False, "{} has no network {}".format(self.dest_name, net))
        for pool in sorted(set(pools)):
            try:
                active = bool(self.dest.virt.storagePoolLookupByName(pool).isActive())
                self._check(
                    "dest_pool",
                    active,
                    "storage pool {} on {} is {}".format(pool, self.dest_name, "active" if active else "not active"),
                )
            except Exception:
                self._check("dest_pool", False, "{} has no storage pool {}".format(self.dest_name, pool))
        for pool, volume in sorted(set(volumes)):
            try:
                self.dest.virt.storagePoolLookupByName(pool).storageVolLookupByName(volume)
                self._check("dest_volume", True, "volume {} in pool {} on {}".format(volume, pool, self.dest_name))
            except Exception:
                self._check(
                    "dest_volume",
                    False,
                    "{} does not see volume {} in pool {} (on shared storage, refresh the pool there)".format(
                        self.dest_name, volume, pool
                    ),
                )
        if not self.plan["verify"]:
            return
        cfg = self.lock_config
        if not cfg.enabled or not cfg.probeable:
            why = (
                "no lock manager is configured for the {} driver".format(self.src.profile.name)
                if not cfg.enabled
                else "leases of {} cannot be probed from here".format(cfg.manager or "?")
            )
            self._check("lock_manager", False, "{}; set lock.verify: false to migrate without verification".format(why))
            return
        unleased = rw_disks_without_lease(self._all_resources(root))
        if unleased and not any(r["kind"] == "lease" for r in self.resources):
            self.warnings.append(
                "{} has read-write disks no lease protects: {}".format(
                    self.name, ", ".join(r["disk"] or "?" for r in unleased)
                )
            )
        if self.src_state == "running" or self.src.profile.paused_guest_holds_leases:
            missing = [r for r in leases if r.get("holder") != "source"]
            self._check(
                "source_holds_leases",
                not missing,
                "all held by {}".format(self.src_name)
                if not missing
                else describe(missing, self.src_name, self.dest_name),
            )

    def _all_resources(self, root):
        from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import domain_lease_resources

        return domain_lease_resources(root, self.lock_config, self._resolve_volume)

    # ------------------------------------------------------------------ idempotence
    def _already_there(self, src_dom, dest_dom):
        with libvirt_errors("cannot read the XML of {}".format(self.name)):
            xml = dest_dom.XMLDesc(0)
        self.resources = self.view.expected(xml)
        leases = self._probe()
        state = state_name(dest_dom)
        self._record(
            "begin/inquire",
            leases=leases,
            host=self.src_name,
            detail="{} already runs on {} ({}) and not on {}: nothing to do".format(
                self.name, self.dest_name, state, self.src_name
            ),
        )
        if src_dom is not None:
            self.warnings.append("a shut-off definition of {} remains on {}".format(self.name, self.src_name))
        return self._result(changed=False, state=state, leases=leases)

    # ------------------------------------------------------------------ migration
    def _on_event(self, role, event, detail, item):
        if role == "dest" and event == "resumed" and detail == _RESUMED_POSTCOPY:
            with self._lock:
                if self._send_done or "postcopy_running" in self.marks:
                    return
                self.marks["postcopy_running"] = item["t"]
            leases = self._probe()
            self._record(
                "perform/postcopy_dest_running",
                ok="source" not in holders(leases),
                leases=leases,
                host=self.dest_name,
                detail="post-copy: {} runs on {} while its memory follows; {}".format(
                    self.name, self.dest_name, describe(leases, self.src_name, self.dest_name)
                ),
            )
            return
        if role == "dest" and event == "started" and detail == _STARTED_MIGRATED:
            with self._lock:
                if self._send_done or "prepare" in self.marks:
                    return
                self.marks["prepare"] = item["t"]
                leases = self._probe()
                rec = self.rec.record(
                    "prepare/register",
                    resources=[r["resource"] for r in leases],
                    host=self.dest_name,
                    ok=self.src.profile.paused_guest_holds_leases or "other" not in holders(leases),
                    detail="incoming guest created paused on {}; it holds no lease yet".format(self.dest_name),
                )
                rec["leases"] = lease_summary(leases)

    def _migrate(self, src_dom, leases):
        plan = self.plan
        self._record(
            "begin/inquire",
            leases=leases,
            ok=True,
            detail="{} {} on {}; flags {}".format(self.name, self.src_state, self.src_name, "|".join(plan["flags"])),
        )
        if self.use_events:
            self.events = LifecycleEvents(self.name, clock=self.clock, on_event=self._on_event)
            self.events.watch(self.src, "source")
            self.events.watch(self.dest, "dest")
        if plan["release"] == RELEASE_BEFORE_SEND:
            lc = Lifecycle(
                self.src,
                PhaseRecorder(self.rec, "perform", {"paused": "source_paused", "leases_released": None}),
                self.lock_config,
            )
            if self.src_state == "running":
                lc.suspend(src_dom)
            self.marks["released"] = self.clock()
            leases = self._probe()
            held = [r for r in leases if r.get("holder") == "source"]
            self._record(
                "perform/source_released",
                ok=not held,
                leases=leases,
                detail="released before the send (old ordering): " + describe(leases, self.src_name, self.dest_name),
            )
        try:
            self._send(src_dom)
        except VirtError as err:
            if "postcopy" in self.marks:
                return self._postcopy_failed(err)
            return self._send_failed(src_dom, err)
        if self.monitor is not None:
            self.outcome = self.monitor.outcome(True)
        return self._handoff(src_dom)

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
        if not self.src.profile.paused_guest_holds_leases:
            self.marks["released"] = self.marks["forced_pause"]
        leases = self._probe()
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

    def _handoff(self, src_dom):
        plan = self.plan
        profile = self.dest.profile
        with self._lock:
            prepared = "prepare" in self.marks
        if not prepared:
            self._record(
                "prepare/register",
                host=self.dest_name,
                detail="inferred: libvirt prepared the destination inside the migration call (no event seen)",
            )
        stats = self._job_stats()
        self._record(
            "perform/send",
            leases=self._probe(),
            detail="sent in {} ms{}".format(
                ms_between(self.marks["send_start"], self.marks["send_end"]),
                "; destination kept paused (VIR_MIGRATE_PAUSED)"
                if plan["handoff"] == "verified"
                else "; post-copy: libvirt ran the guest on the destination"
                if "postcopy" in self.marks
                else "; post-copy allowed but not needed: libvirt resumed the guest on the destination",
            ),
        )
        self.job = job_summary(stats)
        dest_dom = lookup(self.dest, DOMAIN, self.name)
        if dest_dom is None:
            self._fail("perform: the send succeeded but {} has no domain {}".format(self.dest_name, self.name))

        # perform/source_released
        leases = self._probe()
        still = [r for r in leases if r.get("holder") == "source"]
        if still:
            src_left = lookup(self.src, DOMAIN, self.name)
            if src_left is None or not self._active(src_left):
                # QEMU is gone, virtlockd drops its locks with the process: give it a moment
                for _i in range(20):
                    self.sleep(0.1)
                    leases = self._probe()
                    still = [r for r in leases if r.get("holder") == "source"]
                    if not still:
                        break
        if "released" not in self.marks:
            ev = self.events.first("source", "suspended", _SUSPENDED_MIGRATED) if self.events else None
            self.marks["released"] = ev["t"] if ev else self.marks["send_end"]
        self._record(
            "perform/source_released",
            ok=not still,
            leases=leases,
            detail=describe(leases, self.src_name, self.dest_name),
        )
        if still and plan["verify"]:
            self._fail(
                "perform: {} still holds {} after the send; {} is left paused on {}, not resumed".format(
                    self.src_name, describe(still, self.src_name, self.dest_name), self.name, self.dest_name
                ),
                changed=True,
                state=state_name(dest_dom),
                leases=leases,
            )

        # finish: the destination takes the leases and runs
        leave_paused = self.src_state == "paused"
        dest_state = state_name(dest_dom)
        if plan["handoff"] != "verified" or profile.paused_guest_holds_leases:
            leases = self._verify_dest(dest_dom, "finish/dest_acquired", paused_ok=leave_paused)
            if dest_state == "paused" and not leave_paused:
                self._resume_dest(dest_dom)
        elif leave_paused:
            leases = self._probe()
            self._record(
                "finish/dest_acquired",
                leases=leases,
                detail="not acquired: {} was paused on {} and stays paused".format(self.name, self.src_name),
            )
        else:
            self._resume_dest(dest_dom)
            leases = self._verify_dest(dest_dom, "finish/dest_acquired")
        self.marks.setdefault("acquired", self.clock())
        dest_state = state_name(dest_dom)
        want = "paused" if leave_paused else "running"
        self._record(
            "finish/resumed",
            ok=dest_state == want,
            host=self.dest_name,
            detail="{} is {} on {}".format(self.name, dest_state, self.dest_name),
        )
        self._confirm()
        leases = self._probe()
        result = self._result(changed=True, state=dest_state, leases=leases)
        self._timing(result)
        if dest_state != want:
            self._fail(
                "finish: {} is {} on {}, not {}".format(self.name, dest_state, self.dest_name, want),
                changed=True,
                state=dest_state,
                leases=leases,
            )
        return result

    def _resume_dest(self, dest_dom):
        lc = Lifecycle(
            self.dest,
            PhaseRecorder(
                self.rec,
                "finish",
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
            lc.resume(dest_dom, required=False, acquire_timeout=self.plan["acquire_timeout"], verify=False)
        except VirtError as err:
            self.marks["resume_failed"] = self.clock()
            leases = self._probe()
            self._record(
                "finish/dest_acquired",
                ok=False,
                leases=leases,
                host=self.dest_name,
                detail="{} could not resume {}: {}".format(self.dest_name, self.name, err.msg),
            )
            src_state = self._confirm()
            blocking = [r for r in leases if r.get("held")] or leases
            waited = " within lock.acquire_timeout ({}s)".format(self.plan["acquire_timeout"]) if err.is_busy else ""
            self._fail(
                "finish: {0} could not take the leases of {1}{2}: {3}. {1} is left {4} on {0} and runs nowhere "
                "({5}: {6}); resume it on {0} once the lease is free".format(
                    self.dest_name,
                    self.name,
                    waited,
                    describe(blocking, self.src_name, self.dest_name),
                    state_name(dest_dom),
                    self.src_name,
                    src_state,
                ),
                changed=True,
                state=state_name(dest_dom),
                leases=leases,
                err=err,
                cls=LeaseError if err.is_busy else VirtError,
            )
        self.marks["acquired"] = self.clock()

    def _verify_dest(self, dest_dom, name, paused_ok=False):
        leases = self._probe()
        bad = [r for r in leases if r.get("holder") != "other"]
        if paused_ok:
            bad = [r for r in leases if r.get("holder") == "source"]
        detail = describe(leases, self.src_name, self.dest_name)
        if not bad and leases:
            detail = "held by {}, not by {}'s virtlockd: {}".format(self.dest_name, self.src_name, detail)
        self._record(name, ok=not bad, leases=leases, host=self.dest_name, detail=detail)
        if bad and self.plan["verify"]:
            state = state_name(dest_dom)
            if state == "running" and not self.dest.profile.paused_guest_holds_leases:
                try:
                    dest_dom.suspend()
                    state = "paused"
                except Exception:
                    pass
            self._fail(
                "finish: {} runs without holding its leases on {} ({}); it was paused".format(
                    self.name, self.dest_name, describe(bad, self.src_name, self.dest_name)
                ),
                changed=True,
                state=state,
                leases=leases,
                cls=LeaseError,
            )
        return leases

    def _confirm(self):
        src_dom, stopped = self._wait_inactive(self.src, 10)
        state = "absent" if src_dom is None else state_name(src_dom)
        self._record(
            "confirm/source_stopped",
            ok=stopped,
            detail="{} on {}: {}".format(self.name, self.src_name, "undefined" if src_dom is None else state),
        )
        return state

    def _job_stats(self):
        for conn, _role in ((self.dest, "dest"), (self.src, "source")):
            dom = lookup(conn, DOMAIN, self.name)
            if dom is None:
                continue
            try:
                stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            except Exception:
                continue
            if stats and stats.get("time_elapsed") is not None:
                return stats
        return {}

    def _timing(self, result):
        """lease_gap_ms and downtime_ms, from lifecycle events when seen, else from the module's own marks."""
        ev = self.events
        released = self.marks.get("released")
        acquired = self.marks.get("acquired")
        source = "checkpoints"
        stopped_at = self.marks.get("send_end")
        running_at = acquired
        if ev is not None and ev.available:
            suspended = ev.first("source", "suspended", _SUSPENDED_MIGRATED) or ev.first("source", "suspended")
            resumed = ev.wait_for("dest", "resumed", timeout=1.0 if acquired else 0, sleep=self.sleep)
            if suspended is not None and resumed is not None:
                stopped_at, running_at = suspended["t"], resumed["t"]
                source = "events"
            result["events"] = ev.as_list()
        if released is not None and acquired is not None:
            result["lease_gap_ms"] = ms_between(released, acquired)
        if stopped_at is not None and running_at is not None and acquired is not None:
            result["downtime_ms"] = ms_between(stopped_at, running_at)
        result["timing_source"] = source if acquired is not None else None
