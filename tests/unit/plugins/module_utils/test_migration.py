"""Migration plan, flags and the checkpointed handoff against fake hypervisors.

The fake follows libvirt's lock ordering for each driver (src/qemu/qemu_migration.c, src/libxl/):
- qemu: Prepare creates the incoming guest paused (reason: migration, an incoming job), holding no lease;
  Perform stops the source's vCPUs for the final part of the transfer and releases its leases right
  there (qemuProcessHandleStop), before the send has completed; Finish leaves the destination paused with
  VIR_MIGRATE_PAUSED (event SUSPENDED/paused) and acquires only when it is resumed; Confirm, some time
  later, kills the source (event STOPPED/migrated). A send cancelled before the stop keeps the source
  running and leased.
- libxl (after libvirt's "Fix lock manager lock ordering"): the source releases only after a successful
  send, the destination acquires in Finish before unpausing (and keeps them while it stays paused).
Lifecycle events are delivered to the manager's event watcher the way libvirt's event loop would.
"""

import time

import libvirt
import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import CheckpointRecorder
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import LeaseError, ValidationError, VirtError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import LockConfig
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.migration import MigrationManager
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.migration.handoff import HandoffPhase
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration import (
    MIGRATE_ARGUMENT_SPEC,
    LifecycleEvents,
    PhaseRecorder,
    build_plan,
    checkpoint_order,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.profiles import LIBXL, QEMU

RESOURCES = ["/ls/disk-hash", "/ls/g1-lease"]
XML = (
    "<domain type='{type}'><name>g1</name><uuid>11111111-2222-3333-4444-555555555555</uuid>"
    "<devices><disk type='file' device='disk'><source file='/shared/g1.qcow2'/><target dev='vda'/></disk>"
    "</devices></domain>"
)


def params(**kw):
    out = {k: v.get("default") for k, v in MIGRATE_ARGUMENT_SPEC.items()}
    out["lock"] = {"release": "after_send", "verify": True, "acquire_timeout": 5}
    out.update(name="g1", dest_uri="xen+ssh://hv2/system", uri=None)
    for k, v in kw.items():
        if k == "lock":
            out["lock"] = dict(out["lock"], **v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------- plan and flags
def test_default_plan_is_the_verified_paused_handoff():
    plan = build_plan(params(), QEMU)
    assert plan["flags"] == ["LIVE", "PEER2PEER", "PERSIST_DEST", "UNDEFINE_SOURCE", "PAUSED"]
    expected = 0
    for f in plan["flags"]:
        expected |= getattr(libvirt, "VIR_MIGRATE_" + f)
    assert plan["flags_value"] == expected
    assert plan["handoff"] == "verified" and plan["api"] == "migrateToURI3"


def test_every_option_becomes_its_flag_or_parameter():
    plan = build_plan(
        params(
            copy_storage="incremental",
            auto_converge=True,
            compressed=True,
            parallel_connections=4,
            unsafe=True,
            bandwidth=200,
            max_downtime=300,
            persistent=False,
            undefine_source=False,
            live=False,
        ),
        QEMU,
    )
    assert set(plan["flags"]) == {
        "PEER2PEER",
        "NON_SHARED_INC",
        "AUTO_CONVERGE",
        "COMPRESSED",
        "PARALLEL",
        "UNSAFE",
        "PAUSED",
    }
    assert plan["params"] == {"bandwidth": 200, "parallel.connections": 4}
    assert plan["max_downtime"] == 300


def test_modes():
    assert {"PEER2PEER", "TUNNELLED"} <= set(build_plan(params(mode="tunnelled"), QEMU)["flags"])
    direct = build_plan(params(mode="direct"), QEMU)
    assert "PEER2PEER" not in direct["flags"] and direct["api"] == "migrate3"


@pytest.mark.parametrize(
    "kw, text",
    [
        ({"mode": "direct", "extra_flags": ["TUNNELLED"]}, "tunnelled migration needs peer-to-peer"),
        ({"postcopy": 10, "live": False}, "postcopy needs a live migration"),
        ({"postcopy": 10, "lock": {"release": "before_send"}}, "postcopy cannot be combined"),
        ({"bandwidth": 0}, "bandwidth must be a positive number"),
        ({"lock": {"acquire_timeout": -1}}, "acquire_timeout"),
    ],
)
def test_contradictions_are_refused(kw, text):
    with pytest.raises(ValidationError, match=text):
        build_plan(params(**kw), QEMU)


def test_postcopy_hands_the_leases_to_libvirt():
    plan = build_plan(params(postcopy=5), QEMU)
    assert "POSTCOPY" in plan["flags"] and "PAUSED" not in plan["flags"]
    assert plan["handoff"] == "libvirt_postcopy"


def test_libxl_profile_allows_only_its_subset():
    plan = build_plan(params(), LIBXL)
    assert plan["flags"] == ["LIVE", "PEER2PEER", "PERSIST_DEST", "UNDEFINE_SOURCE", "PAUSED"]
    for kw in ({"unsafe": True}, {"compressed": True}, {"copy_storage": "all"}, {"auto_converge": True}):
        with pytest.raises(ValidationError, match="not supported by the libxl driver"):
            build_plan(params(**kw), LIBXL)
    with pytest.raises(ValidationError, match="bandwidth not supported by the libxl driver"):
        build_plan(params(bandwidth=10), LIBXL)


def test_phase_recorder_renames_and_drops():
    rec = CheckpointRecorder(host="h")
    pr = PhaseRecorder(rec, "finish", {"acquire_failed": "acquire_busy", "running": None})
    pr.record("acquire_failed", ok=False)
    pr.record("running")
    pr.record("resumed")
    assert rec.names() == ["finish/acquire_busy", "finish/resumed"]


# --------------------------------------------------------------------------- fake hypervisors
def busy(resource):
    return libvirt.libvirtError("resource busy: Lockspace resource '{}' is locked".format(resource))


EV = {"defined": 0, "started": 2, "suspended": 3, "resumed": 4, "stopped": 5}


class World:
    def __init__(self, driver="libxl"):
        self.driver = driver
        self.profile = LIBXL if driver == "libxl" else QEMU
        self.locks = {}
        self.log = []
        self.hosts = {}
        self.watchers = []
        self.fail_send = False
        self.stale_attempts = 0  # resumes on the destination refused before the stale holder goes
        self.stale_resource = RESOURCES[1]
        self.release_lag = 0  # probes that still see the source's lease after the final stop
        self.transfer_time = 0.1  # seconds from Prepare to the final stop
        self.confirm_delay = 0.3  # seconds between Finish and Confirm (libvirt: ~210 ms on the lab)
        self.confirm_keeps_source = False
        self.violations = []
        self.probe_saw_released = False

    def emit(self, host, event, detail):
        for h, role, events in self.watchers:
            if h == host:
                events.add(role, EV[event], detail)

    def acquire(self, host):
        for r in RESOURCES:
            if self.locks.get(r) not in (None, host):
                raise busy(r)
        for r in RESOURCES:
            self.locks[r] = host
        self.log.append("acquire@" + host)

    def release(self, host):
        for r in RESOURCES:
            if self.locks.get(r) == host:
                self.locks[r] = None
        self.log.append("release@" + host)


class FakeEvents(LifecycleEvents):
    def watch(self, conn, role):
        conn.world.watchers.append((conn.hostname, role, self))
        self.available = True
        return True


class FakeDomain:
    def __init__(self, world, host, state="running", reason=1):
        self.world, self.host, self._state, self._reason = world, host, state, reason
        self.job = 0
        self.meta = None
        self.persistent = True

    def name(self):
        return "g1"

    def UUIDString(self):
        return "11111111-2222-3333-4444-555555555555"

    def isActive(self):
        return self._state in ("running", "paused")

    def isPersistent(self):
        return self.persistent

    def state(self):
        return ({"running": 1, "paused": 3}.get(self._state, 5), self._reason)

    def jobInfo(self):
        return [self.job, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]

    def metadata(self, _type, uri, _flags=0):
        if self.meta is None:
            raise libvirt.libvirtError("metadata not found: Requested metadata element is not present")
        return self.meta

    def setMetadata(self, _type, value, _key, _uri, _flags=0):
        self.meta = value
        self.world.log.append("metadata@{}={}".format(self.host, "set" if value else "cleared"))

    def XMLDesc(self, _flags=0):
        return XML.format(type="xen" if self.world.driver == "libxl" else "qemu")

    def jobStats(self, _flags=0):
        return {"time_elapsed": 700, "downtime": 20, "data_total": 1000, "memory_iteration": 2}

    def suspend(self):
        self._state, self._reason = "paused", 1
        if self.world.driver == "qemu":
            self.world.release(self.host)
        self.world.emit(self.host, "suspended", 0)

    def destroy(self):
        self._state = "shutoff"
        self.world.release(self.host)
        self.world.log.append("destroy@" + self.host)

    def undefine(self):
        del self.world.hosts[self.host].domains["g1"]

    def resume(self):
        w = self.world
        if self.host == "hv2":
            if any(holder == "hv1" for holder in w.locks.values()) or not w.probe_saw_released:
                w.violations.append("hv2 resumed before a probe showed hv1 released: {}".format(dict(w.locks)))
            if w.stale_attempts > 0:
                w.stale_attempts -= 1
                w.locks[w.stale_resource] = "stale"
                raise busy(w.stale_resource)
        if w.locks.get(w.stale_resource) == "stale":
            w.locks[w.stale_resource] = None
        if w.driver == "qemu":
            w.acquire(self.host)
        self._state, self._reason = "running", 1
        w.log.append("resume@" + self.host)
        w.emit(self.host, "resumed", 0)

    def migrateToURI3(self, uri, params, flags):
        w = self.world
        src, dst = w.hosts["hv1"], w.hosts["hv2"]
        w.log.append("begin")
        incoming = FakeDomain(w, "hv2", state="paused", reason=2)
        incoming.job = 2
        incoming.meta = self.meta
        dst.domains["g1"] = incoming
        w.emit("hv2", "started", 1)
        w.log.append("prepare")
        if w.fail_send:
            del dst.domains["g1"]  # finish(cancelled) kills the half-received guest: it held nothing
            w.emit("hv2", "stopped", 2)
            w.log.append("perform_failed")
            raise libvirt.libvirtError("operation failed: migration out job: unexpectedly failed")
        time.sleep(w.transfer_time)
        self._state, self._reason = "paused", 2
        if w.driver == "qemu":
            # the final vCPU stop: qemuProcessHandleStop releases the leases, before the send completes
            if w.release_lag:
                w.log.append("stop(release pending)")
            else:
                w.release("hv1")
        w.emit("hv1", "suspended", 1)
        w.log.append("perform")
        if w.driver == "libxl":
            w.release("hv1")  # only after a successful send
            w.acquire("hv2")  # finish: before unpausing, even when it stays paused
        incoming.job, incoming._reason = 0, 1
        w.log.append("finish")
        if not flags & libvirt.VIR_MIGRATE_PAUSED:
            incoming.resume()
        else:
            w.emit("hv2", "suspended", 0)
        time.sleep(w.confirm_delay)
        w.log.append("confirm")
        if w.confirm_keeps_source:
            return
        self._state, self._reason = "shutoff", 3
        w.emit("hv1", "stopped", 3)
        if flags & libvirt.VIR_MIGRATE_UNDEFINE_SOURCE:
            del src.domains["g1"]


class FakeVirt:
    def __init__(self, host):
        self.host = host

    def getCapabilities(self):
        return "<capabilities><host><uuid>{}</uuid></host></capabilities>".format(self.host.uuid)

    def lookupByName(self, name):
        if name in self.host.domains:
            return self.host.domains[name]
        err = libvirt.libvirtError("Domain not found: no domain with matching name '{}'".format(name))
        err.err = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU, err.args[0], 2, None, None, None, 0, 0)
        raise err

    def networkLookupByName(self, name):
        raise libvirt.libvirtError("no network")

    def storagePoolLookupByName(self, name):
        raise libvirt.libvirtError("no pool")


class FakeConn:
    def __init__(self, world, name, uuid):
        self.world, self.hostname, self.uuid = world, name, uuid
        self.uri = "{}://{}/system".format("xen" if world.driver == "libxl" else "qemu", name)
        self.profile = world.profile
        self.local = True
        self.domains = {}
        self.virt = FakeVirt(self)
        world.hosts[name] = self

    def close(self):
        pass


class FakeView:
    def __init__(self, world):
        self.world = world

    def __call__(self, lock_config, resolve_volume=None):
        return self

    def expected(self, _xml):
        return [
            {
                "kind": "disk",
                "resource": RESOURCES[0],
                "lockspace": "/ls",
                "disk": "vda",
                "key": None,
                "path": "/shared/g1.qcow2",
                "shared": False,
            },
            {
                "kind": "lease",
                "resource": RESOURCES[1],
                "lockspace": "/ls",
                "disk": None,
                "key": "g1-lease",
                "path": None,
                "shared": False,
            },
        ]

    def probe(self, resources):
        w = self.world
        if "stop(release pending)" in w.log and "release@hv1" not in w.log:
            if w.release_lag > 0:
                w.release_lag -= 1
            else:
                w.release("hv1")  # virtlockd has let go
        out = []
        for r in resources:
            holder = w.locks.get(r["resource"])
            r = dict(r, held=holder is not None, held_here=holder == "hv1", holder_pid=None)
            r["holder"] = "source" if holder == "hv1" else ("other" if holder else None)
            out.append(r)
        w.probe_saw_released = not any(x["holder"] == "source" for x in out)
        return out


def make_world(driver="libxl", where="hv1", same_uuid=False):
    w = World(driver)
    hv1 = FakeConn(w, "hv1", "uuid-1")
    hv2 = FakeConn(w, "hv2", "uuid-1" if same_uuid else "uuid-2")
    host = hv1 if where == "hv1" else hv2
    host.domains["g1"] = FakeDomain(w, where)
    w.locks = {r: where for r in RESOURCES}
    return w, hv1, hv2


def manager(w, check_mode=False, events=True, **kw):
    def open_conn(uri):
        return w.hosts["hv2"] if uri and "hv2" in uri else w.hosts["hv1"]

    def read_config(profile, local=True):
        return LockConfig(manager="lockd", file_lockspace_dir="/ls", local=True)

    mgr = MigrationManager(
        params(**kw),
        check_mode=check_mode,
        open_conn=open_conn,
        lease_view=FakeView(w),
        events=FakeEvents if events else False,
        sleep=lambda _s: None,
        read_config=read_config,
    )
    mgr.release_wait = mgr.source_stop_wait = 0.3
    return mgr


def holders_at(result):
    return {
        c["name"]: sorted(set(x["holder"] for x in c.get("leases", []) if x["holder"]))
        for c in result["lock_checkpoints"]
    }


def names(result):
    return [c["name"] for c in result["lock_checkpoints"]]


@pytest.mark.parametrize("events", [True, False], ids=["events", "polling"])
@pytest.mark.parametrize("driver", ["libxl", "qemu"])
def test_successful_handoff_checkpoints_in_order(driver, events):
    w, hv1, hv2 = make_world(driver)
    result = manager(w, events=events).run()
    assert result["changed"] is True and result["state"] == "running"
    assert names(result) == checkpoint_order(releases_at_stop=driver == "qemu" and events)
    assert all(c["ok"] for c in result["lock_checkpoints"])
    ats = [c["at"] for c in result["lock_checkpoints"]]
    assert ats == sorted(ats)
    at = holders_at(result)
    assert at["begin/inquire"] == ["source"]
    assert at["finish/dest_acquired"] == ["other"]
    # libxl: the destination already holds its leases while paused; qemu: nobody holds them in the gap
    assert at["perform/source_released"] == (["other"] if driver == "libxl" else [])
    assert "g1" not in hv1.domains and hv2.domains["g1"]._state == "running"
    assert w.locks == {r: "hv2" for r in RESOURCES}
    assert result["job"]["elapsed_ms"] == 700
    assert result["hosts"] == {"hv1": "absent", "hv2": "running"}
    assert hv2.domains["g1"].meta is None  # the handoff marker is cleared once the handoff is complete
    assert not w.violations
    by_name = {c["name"]: c for c in result["lock_checkpoints"]}
    assert by_name["finish/dest_acquired"]["verified"] is True
    assert "lease probe" in by_name["finish/dest_acquired"]["verified_by"]
    assert "other than hv1" in by_name["finish/dest_acquired"]["detail"]
    if events:
        assert result["timing_source"] == "events" and result["downtime_ms"] is not None
        assert by_name["finish/resumed"]["source"] == "event"
        assert by_name["perform/send"]["source"] == "event"
        assert result["lease_gap_ms"] == (result["downtime_ms"] if driver == "qemu" else None)
    else:
        # no event on both ends: no figure presented as a measurement
        assert result["downtime_ms"] is None and result["lease_gap_ms"] is None and result["timing_source"] is None


@pytest.mark.parametrize("events", [True, False], ids=["events", "polling"])
def test_destination_resumed_before_the_source_confirm(events):
    w, _hv1, _hv2 = make_world("qemu")
    manager(w, events=events).run()
    assert w.log.index("resume@hv2") < w.log.index("confirm")
    assert w.log.index("release@hv1") < w.log.index("finish")  # qemu releases at the final stop


def test_destination_never_resumed_before_the_probe_shows_the_source_released():
    w, _hv1, _hv2 = make_world("qemu")
    w.release_lag = 3  # virtlockd lets go a little after the stop
    result = manager(w).run()
    assert not w.violations
    assert w.log.index("release@hv1") < w.log.index("resume@hv2")
    assert result["state"] == "running"


def test_the_ordering_test_can_fail(monkeypatch):
    """Without the wait for the source's release the fake catches the early resume."""
    w, _hv1, _hv2 = make_world("qemu")
    w.release_lag = 3
    monkeypatch.setattr(HandoffPhase, "_wait_released", lambda self, phase="perform": ([], []))
    with pytest.raises(VirtError):
        manager(w, lock={"acquire_timeout": 0}).run()
    assert w.violations


def test_libxl_order_source_releases_only_after_the_send_and_dest_acquires_in_finish():
    w, _hv1, _hv2 = make_world("libxl")
    manager(w).run()
    core = [e for e in w.log if not e.startswith("metadata")]
    assert core == ["begin", "prepare", "perform", "release@hv1", "acquire@hv2", "finish", "resume@hv2", "confirm"]


@pytest.mark.parametrize("driver", ["libxl", "qemu"])
def test_failed_send_needs_no_reacquire(driver):
    w, hv1, hv2 = make_world(driver)
    w.fail_send = True
    with pytest.raises(VirtError) as info:
        manager(w).run()
    err = info.value
    assert err.msg.startswith("perform: sending g1 from hv1 to hv2 failed")
    assert "keeps running on hv1 holding its leases (verified)" in err.msg
    assert names(err.result) == [
        "begin/inquire",
        "prepare/register",
        "perform/send",
        "finish/dest_clean",
        "confirm/source_kept",
    ]
    assert err.result["changed"] is False
    assert w.locks == {r: "hv1" for r in RESOURCES}
    assert not any(e.startswith(("release", "acquire")) for e in w.log)
    assert hv1.domains["g1"]._state == "running" and "g1" not in hv2.domains
    assert hv1.domains["g1"].meta is None


def test_busy_destination_is_retried_then_succeeds():
    w, _hv1, hv2 = make_world("qemu")
    w.stale_attempts = 2
    result = manager(w).run()
    got = names(result)
    assert got.count("finish/acquire_busy") == 2
    assert [n for n in got if n != "finish/acquire_busy"] == checkpoint_order()
    assert hv2.domains["g1"]._state == "running"


def test_busy_destination_past_the_timeout_returns_the_whole_result():
    w, hv1, hv2 = make_world("qemu")
    w.stale_attempts = 10**6
    with pytest.raises(LeaseError) as info:
        manager(w, lock={"acquire_timeout": 0}).run()
    err = info.value
    assert err.msg.startswith("finish: hv2 could not take the leases of g1 within")
    assert "g1 is paused on hv2 and absent on hv1; it runs nowhere: run the task again" in err.msg
    assert err.result["changed"] is True and err.result["state"] == "paused"
    assert err.result["hosts"] == {"hv1": "absent", "hv2": "paused"}
    got = names(err.result)
    assert "finish/dest_acquired" in got and got[-1] == "confirm/source_stopped"
    assert hv2.domains["g1"]._state == "paused" and "g1" not in hv1.domains
    # while the lease stays busy the re-run fails the same way, reporting the whole result
    with pytest.raises(LeaseError) as again_info:
        manager(w, lock={"acquire_timeout": 0}).run()
    busy = again_info.value.result
    assert busy["changed"] is True and busy["state"] == "paused" and "reconcile/inquire" in names(busy)
    assert again_info.value.msg.startswith("reconcile: hv2 could not take the leases of g1")
    assert "Now: g1 is absent on hv1, g1 is paused on hv2" in again_info.value.msg
    # the re-run finishes the handoff once the lease is free
    w.stale_attempts = 0
    w.locks[w.stale_resource] = None
    again = manager(w).run()
    assert again["changed"] is True and again["state"] == "running"
    assert [n for n in names(again) if n.startswith("reconcile/")] == [
        "reconcile/inquire",
        "reconcile/source_released",
        "reconcile/dest_acquired",
        "reconcile/resumed",
    ]
    assert manager(w).run()["changed"] is False


def test_source_still_running_after_the_handoff_fails_with_the_whole_result():
    w, hv1, hv2 = make_world("qemu")
    w.confirm_keeps_source = True
    real = FakeDomain.migrateToURI3

    def keep_running(self, uri, p, flags):
        real(self, uri, p, flags)
        self._state = "running"

    hv1.domains["g1"].migrateToURI3 = keep_running.__get__(hv1.domains["g1"])
    with pytest.raises(VirtError) as info:
        manager(w).run()
    err = info.value
    assert err.msg.startswith("confirm: g1 is still running on hv1 after the handoff")
    assert err.result["changed"] is True and err.result["hosts"] == {"hv1": "running", "hv2": "running"}
    assert names(err.result)[-1] == "confirm/source_stopped"
    assert err.result["lock_checkpoints"][-1]["ok"] is False


def test_error_after_the_send_still_returns_the_whole_result():
    w, _hv1, hv2 = make_world("qemu")

    def broken(dom):
        raise libvirt.libvirtError("Cannot recv data: Connection reset by peer")

    real = FakeDomain.resume

    def resume(self):
        if self.host == "hv2":
            broken(self)
        real(self)

    FakeDomain.resume = resume
    try:
        with pytest.raises(VirtError) as info:
            manager(w).run()
    finally:
        FakeDomain.resume = real
    err = info.value
    assert "Connection reset by peer" in err.msg and "g1 is paused on hv2" in err.msg
    assert err.result["changed"] is True and err.result["state"] == "paused"
    assert "perform/send" in names(err.result)


def test_rerun_after_the_module_died_finishes_the_handoff():
    """The module was killed after the send: libvirt finished the job, the guest is paused on hv2."""
    w, hv1, hv2 = make_world("qemu")
    dom = hv1.domains.pop("g1")
    dom.meta = "<handoff dest='hv2' resume='yes'/>"
    paused = FakeDomain(w, "hv2", state="paused", reason=1)
    paused.meta = dom.meta
    hv2.domains["g1"] = paused
    w.locks = {r: None for r in RESOURCES}
    result = manager(w).run()
    assert result["changed"] is True and result["state"] == "running"
    assert names(result) == [
        "reconcile/inquire",
        "reconcile/source_released",
        "reconcile/dest_acquired",
        "reconcile/resumed",
    ]
    assert w.locks == {r: "hv2" for r in RESOURCES} and paused.meta is None
    assert not w.violations
    assert manager(w).run()["changed"] is False


def test_rerun_with_a_source_paused_by_the_migration_resumes_it_and_migrates():
    w, hv1, hv2 = make_world("qemu")
    src = hv1.domains["g1"]
    src._state, src._reason = "paused", 2  # stopped for the final copy, the send cancelled
    w.locks = {r: None for r in RESOURCES}
    result = manager(w).run()
    got = names(result)
    assert got[:2] == ["reconcile/inquire", "reconcile/source_resumed"]
    assert got[-1] == "confirm/source_stopped" and result["changed"] is True
    assert hv2.domains["g1"]._state == "running"


def test_rerun_with_both_copies_paused_keeps_the_destination():
    w, hv1, hv2 = make_world("qemu")
    src = hv1.domains["g1"]
    src._state, src._reason = "paused", 2
    src.meta = "<handoff dest='hv2' resume='yes'/>"
    dest = FakeDomain(w, "hv2", state="paused", reason=1)
    dest.meta = src.meta
    hv2.domains["g1"] = dest
    w.locks = {r: None for r in RESOURCES}
    result = manager(w, mode="direct").run()
    assert result["changed"] is True and result["state"] == "running"
    assert "reconcile/source_stopped" in names(result)
    assert "g1" not in hv1.domains and dest._state == "running"


def test_paused_guest_without_a_marker_is_left_alone():
    w, _hv1, hv2 = make_world("qemu", where="hv2")
    hv2.domains["g1"]._state = "paused"
    w.locks = {r: None for r in RESOURCES}
    result = manager(w).run()
    assert result["changed"] is False and result["state"] == "paused"


def test_before_send_failed_send_must_reacquire_and_can_fail():
    w, hv1, hv2 = make_world("qemu")
    w.fail_send = True
    real = FakeDomain.migrateToURI3

    def send_while_dest_holds(self, uri, p, flags):
        w.locks[RESOURCES[1]] = "hv2"  # the half-received guest's lease, not cleaned up yet
        return real(self, uri, p, flags)

    hv1.domains["g1"].migrateToURI3 = send_while_dest_holds.__get__(hv1.domains["g1"])
    with pytest.raises(LeaseError) as info:
        manager(w, lock={"release": "before_send", "acquire_timeout": 0}).run()
    assert "could not take its leases back" in info.value.msg
    got = names(info.value.result)
    assert got[:3] == ["begin/inquire", "perform/source_paused", "perform/source_released"]
    assert "perform/send" in got and "confirm/source_reacquire_busy" in got
    assert hv1.domains["g1"]._state == "paused"
    assert any("before_send" in x for x in info.value.result["warnings"])
    # the source stays paused, running nowhere, with the handoff marker: the re-run resumes it, then migrates
    assert hv1.domains["g1"].meta is not None
    w.fail_send = False
    w.locks[RESOURCES[1]] = None
    del hv1.domains["g1"].migrateToURI3
    again = manager(w).run()
    assert names(again)[:2] == ["reconcile/inquire", "reconcile/source_resumed"]
    assert again["changed"] is True and hv2.domains["g1"]._state == "running"


def test_already_on_destination_is_unchanged():
    w, _hv1, _hv2 = make_world("qemu", where="hv2")
    result = manager(w).run()
    assert result["changed"] is False and result["state"] == "running"
    assert names(result) == ["begin/inquire"]


def test_same_host_is_refused():
    w, _hv1, _hv2 = make_world("qemu", same_uuid=True)
    with pytest.raises(ValidationError, match="same host UUID uuid-1"):
        manager(w).run()


def test_guest_not_found():
    w, hv1, _hv2 = make_world("qemu")
    del hv1.domains["g1"]
    with pytest.raises(ValidationError, match="guest g1 not found on hv1"):
        manager(w).run()


def test_check_mode_plans_and_touches_nothing():
    w, hv1, _hv2 = make_world("qemu")
    result = manager(w, check_mode=True).run()
    assert result["changed"] is True and result["lock_checkpoints"] == []
    assert "PAUSED" in result["plan"]["flags"] and "finish/dest_acquired" in result["would"]
    assert w.log == [] and hv1.domains["g1"]._state == "running"


def test_check_mode_fails_when_the_source_does_not_hold_its_leases():
    w, _hv1, _hv2 = make_world("qemu")
    w.locks[RESOURCES[1]] = None
    with pytest.raises(VirtError, match="source_holds_leases"):
        manager(w, check_mode=True).run()
    assert w.log == []


def test_memory_sizes_use_the_shared_parser():
    from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.migration.preflight import memory_bytes
    from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import parse_xml

    assert memory_bytes(parse_xml("<domain><memory unit='KiB'>131072</memory></domain>")) == 128 * 1024**2
    assert memory_bytes(parse_xml("<domain><memory>1024</memory></domain>")) == 1024**2
    assert memory_bytes(parse_xml("<domain><memory unit='GB'>1</memory></domain>")) == 1000**3
