"""Starting and stopping with leases: lock config from temp files, real locks held by another process."""

import copy
import os
import subprocess
import sys

import libvirt
import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt import leases as leases_mod
from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import CheckpointRecorder
from ansible_collections.lockstep.virt.plugins.module_utils._virt.connection import Connection
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import LeaseError, VirtError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import LockConfig, read_lock_config
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import Lifecycle
from ansible_collections.lockstep.virt.plugins.module_utils._virt.profiles import LIBXL
from ansible_collections.lockstep.virt.plugins.modules import domain as domain_module
from ansible_collections.lockstep.virt.plugins.modules import domain_info as domain_info_module
from ansible_collections.lockstep.virt.plugins.modules import lease_info as lease_info_module
from ansible_collections.lockstep.virt.tests.unit.fakes.clock import FakeClock
from ansible_collections.lockstep.virt.tests.unit.fakes.leases import HOLDER

URI = "test:///default"


@pytest.fixture
def lockd_host(tmp_path, monkeypatch):
    """Point the lock config at temp files: lockd on, file_lockspace_dir under tmp_path."""
    shared = tmp_path / "shared"
    (shared / "lockd").mkdir(parents=True)
    qemu = tmp_path / "qemu.conf"
    qemu.write_text('lock_manager = "lockd"\n')
    lockd = tmp_path / "qemu-lockd.conf"
    lockd.write_text('auto_disk_leases = 1\nfile_lockspace_dir = "{}"\n'.format(shared / "lockd"))
    monkeypatch.setenv("LOCKSTEP_VIRT_LOCK_CONF", str(qemu))
    monkeypatch.setenv("LOCKSTEP_VIRT_LOCKD_CONF", str(lockd))
    return shared


@pytest.fixture
def hold():
    procs = []

    def start(path):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "write"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "locked"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


LEASED = {"memory": 32, "lease": {"key": "vm-key"}, "disks": [{"path": "/img/leased.qcow2"}]}


def test_required_rolls_back_when_leases_are_not_held_here(hv, run_module, lockd_host):
    res = run_module(
        domain_module.main, {"uri": URI, "name": "lk", "spec": LEASED, "state": "running", "lock": {"required": True}}
    )
    assert res["failed"] is True
    assert "not held by this host" in res["msg"]
    names = [c["name"] for c in res["lock_checkpoints"]]
    assert names == ["defined", "lease_files_created", "created_paused", "resumed", "leases_verified", "rolled_back"]
    assert res["lock_checkpoints"][4]["ok"] is False
    assert not hv.lookupByName("lk").isActive()
    # the module created the <lease> key file lockd would not create
    assert os.path.isfile(str(lockd_host / "lockd" / "vm-key"))


def test_required_names_the_holder_of_a_lease_held_elsewhere(hv, run_module, lockd_host, hold):
    proc = hold(lockd_host / "lockd" / "vm-key")
    res = run_module(
        domain_module.main, {"uri": URI, "name": "lk", "spec": LEASED, "state": "running", "lock": {"required": True}}
    )
    assert res["failed"] is True
    assert "held by pid {}".format(proc.pid) in res["msg"]
    assert not hv.lookupByName("lk").isActive()
    lease = [x for x in res["lock_checkpoints"] if x["name"] == "leases_verified"][0]
    assert str(lockd_host / "lockd" / "vm-key") in lease["resources"]


def test_not_required_runs_and_reports_leases(hv, run_module, lockd_host, hold):
    proc = hold(lockd_host / "lockd" / "vm-key")
    res = run_module(domain_module.main, {"uri": URI, "name": "lk", "spec": LEASED, "state": "running"})
    assert res["changed"] is True and res["domain"]["state"] == "running"
    by_kind = dict((x["kind"], x) for x in res["leases"])
    assert by_kind["lease"]["held"] is True and by_kind["lease"]["held_here"] is False
    assert by_kind["lease"]["holder_pid"] == proc.pid
    assert by_kind["disk"]["resource"].startswith(str(lockd_host / "lockd") + "/")
    assert by_kind["disk"]["held"] is False
    # lease target path defaults so that path/lockspace == file_lockspace_dir
    xml = hv.lookupByName("lk").XMLDesc(0)
    assert "<target path='{}'/>".format(lockd_host) in xml


def test_one_lease_shape_and_one_lockspace_meaning_across_results(hv, run_module, lockd_host, hold):
    """domain, domain_info and lease_info report the same leases with the same fields, and ``lockspace`` is
    the lockspace directory in all three (a VM lease's <target path>/<lockspace>, a disk's file_lockspace_dir)."""
    proc = hold(lockd_host / "lockd" / "vm-key")
    fields = {"kind", "resource", "lockspace", "disk", "path", "key", "held", "held_here", "holder_pid", "holder_host"}
    fields |= {"lock", "sharers"}
    domain = run_module(domain_module.main, {"uri": URI, "name": "lk", "spec": LEASED, "state": "running"})["leases"]
    (info,) = run_module(domain_info_module.main, {"uri": URI, "name": "lk"})["domains"]
    (guest,) = run_module(lease_info_module.main, {"uri": URI, "names": ["lk"]})["guests"]
    for leases in (domain, info["leases"], guest["leases"]):
        assert [set(x) for x in leases] == [fields, fields], leases
        by_kind = dict((x["kind"], x) for x in leases)
        assert by_kind["lease"]["lockspace"] == by_kind["disk"]["lockspace"] == str(lockd_host / "lockd")
        assert by_kind["lease"]["key"] == "vm-key" and by_kind["lease"]["disk"] is None
        assert by_kind["lease"]["resource"] == str(lockd_host / "lockd" / "vm-key")
        assert by_kind["lease"]["holder_pid"] == proc.pid and by_kind["lease"]["held_here"] is False
        assert by_kind["disk"]["path"] == "/img/leased.qcow2" and by_kind["disk"]["key"] is None
    assert domain == info["leases"] == guest["leases"]


class Guest:
    """A real test-driver domain whose first ``busy`` resumes are refused like virtlockd refuses them,
    and whose shutdown can be ignored like a guest without ACPI ignores it."""

    def __init__(self, dom, busy=0, ignore_shutdown=False):
        self._dom = dom
        self.busy = busy
        self.ignore_shutdown = ignore_shutdown

    def __getattr__(self, name):
        return getattr(self._dom, name)

    def resume(self):
        if self.busy:
            self.busy -= 1
            raise VirtError(
                "cannot resume: resource busy: Lockspace resource 'vm-key' is locked",
                code=libvirt.VIR_ERR_RESOURCE_BUSY,
                libvirt_message="resource busy: Lockspace resource 'vm-key' is locked",
            )
        return self._dom.resume()

    def shutdown(self):
        if not self.ignore_shutdown:
            return self._dom.shutdown()
        return 0


def lifecycle(conn, clock):
    rec = CheckpointRecorder(host="hv1")
    return Lifecycle(conn, rec, read_lock_config(conn.profile), sleep=clock.sleep, clock=clock), rec


def define(conn, name="lc", target="/nonexistent"):
    xml = (
        "<domain type='qemu'><name>{}</name><memory unit='MiB'>32</memory><os><type>hvm</type></os><devices>"
        "<lease><lockspace>lockd</lockspace><key>vm-key</key><target path='{}'/></lease>"
        "</devices></domain>"
    ).format(name, target)
    return conn.virt.defineXML(xml)


def test_busy_start_is_retried_until_acquire_timeout(hv):
    clock = FakeClock()
    with Connection(URI) as conn:
        lc, rec = lifecycle(conn, clock)
        guest = Guest(define(conn), busy=2)
        lc.start(guest, acquire_timeout=10)
        assert guest.isActive() and guest.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert rec.names() == [
            "created_paused",
            "acquire_failed",
            "destroyed_paused",
            "created_paused",
            "acquire_failed",
            "destroyed_paused",
            "created_paused",
            "resumed",
            "leases_verified",
            "running",
        ]
        assert rec.as_list()[2]["detail"] == "no lease was taken: nothing to release"
        assert 0 < clock.now < 10


def test_busy_start_fails_naming_the_lease_and_leaves_nothing_running(hv):
    clock = FakeClock()
    with Connection(URI) as conn:
        lc, rec = lifecycle(conn, clock)
        guest = Guest(define(conn), busy=100)
        with pytest.raises(LeaseError) as exc:
            lc.start(guest, acquire_timeout=3)
        msg = exc.value.msg
        assert "lease /nonexistent/lockd/vm-key (key vm-key)" in msg and "after waiting 3s" in msg
        assert exc.value.code == libvirt.VIR_ERR_RESOURCE_BUSY
        assert not guest.isActive()
        assert rec.names()[-2:] == ["acquire_failed", "destroyed_paused"]
        assert clock.now >= 3


def test_busy_without_timeout_fails_at_once(hv):
    clock = FakeClock()
    with Connection(URI) as conn:
        lc, rec = lifecycle(conn, clock)
        guest = Guest(define(conn), busy=1)
        with pytest.raises(LeaseError):
            lc.start(guest)
        assert clock.now == 0 and rec.names() == ["created_paused", "acquire_failed", "destroyed_paused"]


def test_shutdown_of_a_guest_ignoring_acpi_honours_timeout_and_force(hv):
    clock = FakeClock()
    with Connection(URI) as conn:
        lc, rec = lifecycle(conn, clock)
        guest = Guest(define(conn), ignore_shutdown=True)
        guest.create()
        with pytest.raises(VirtError) as exc:
            lc.shutdown(guest, timeout=5, force=False)
        assert "did not stop within 5s" in exc.value.msg and guest.isActive()
        assert 5 <= clock.now < 6
        assert rec.names() == ["shutdown_requested", "stop_timeout"]
        lc.shutdown(guest, timeout=5, force=True)
        assert not guest.isActive()
        assert rec.names()[-3:] == ["shutdown_requested", "stop_timeout", "destroyed"]


def test_shutdown_of_a_paused_guest_fails_clearly_or_destroys_with_force(hv):
    """qemu refuses an ACPI shutdown of a paused guest ("domain is not running"): without force the task says the
    guest is paused and leaves it so; with force it is destroyed instead of failing."""
    clock = FakeClock()
    with Connection(URI) as conn:
        lc, rec = lifecycle(conn, clock)
        dom = define(conn)
        dom.create()
        dom.suspend()
        with pytest.raises(VirtError) as exc:
            lc.shutdown(dom, timeout=5, force=False)
        assert "is paused" in exc.value.msg and "force: true" in exc.value.msg
        assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED and clock.now == 0
        assert rec.names() == []
        lc.shutdown(dom, timeout=5, force=True)
        assert not dom.isActive() and clock.now == 0
        assert rec.names() == ["destroyed"]


class ExitingGuest(Guest):
    """A guest whose process exit ends its lease holder, as virtlockd drops a guest's locks when QEMU exits."""

    def __init__(self, dom, holder):
        super().__init__(dom)
        self.holder = holder

    def shutdown(self):
        self._dom.shutdown()
        self.holder.kill()
        self.holder.wait()


@pytest.mark.parametrize("released", [True, False])
def test_graceful_shutdown_and_released_leases(hv, tmp_path, monkeypatch, hold, released):
    lockdir = tmp_path / "lockd"
    lockdir.mkdir()
    lease_file = lockdir / "vm-key"
    virtlockd = hold(lease_file)  # stands in for this host's virtlockd holding the guest's VM lease
    monkeypatch.setattr(leases_mod, "virtlockd_pids", lambda *a, **kw: {virtlockd.pid})
    clock = FakeClock()
    with Connection(URI) as conn:
        rec = CheckpointRecorder(host="hv1")
        cfg = LockConfig(manager="lockd", file_lockspace_dir=str(lockdir))
        lc = Lifecycle(conn, rec, cfg, sleep=clock.sleep, clock=clock)
        dom = define(conn, target=str(tmp_path))
        dom.create()
        guest = ExitingGuest(dom, virtlockd) if released else dom
        after = lc.shutdown(guest, timeout=5)
        assert rec.names() == ["shutdown_requested", "stopped", "leases_released"] and not dom.isActive()
        check = rec.last()
        assert check["resources"] == [str(lease_file)]
        assert check["ok"] is released
        (lease,) = after
        assert lease["resource"] == str(lease_file) and lease["held_here"] is (not released)
        if not released:
            assert check["detail"] == "still held here: {}".format(lease_file)


def test_paused_start_holds_no_lease_and_stays_paused(hv):
    clock = FakeClock()
    with Connection(URI) as conn:
        lc, rec = lifecycle(conn, clock)
        dom = define(conn)
        lc.start(dom, paused=True)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
        assert rec.names() == ["created_paused", "paused"]
        lc.resume(dom)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert rec.names()[-3:] == ["resumed", "leases_verified", "running"]


def shared_guest(conn, name, path, lockdir=None):
    lease = (
        "<lease><lockspace>lockd</lockspace><key>{}-key</key><target path='{}'/></lease>".format(
            name, os.path.dirname(lockdir)
        )
        if lockdir
        else ""
    )
    xml = (
        "<domain type='qemu'><name>{}</name><memory unit='MiB'>32</memory><os><type>hvm</type></os><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/>"
        "<target dev='vdb' bus='virtio'/><shareable/></disk>{}</devices></domain>"
    ).format(name, path, lease)
    return conn.virt.defineXML(xml)


def test_stopping_one_of_two_guests_sharing_a_disk_leaves_the_shared_lock_to_the_other(hv, tmp_path, monkeypatch):
    """virtlockd keeps one shared lock per host for every guest there sharing a shareable disk: after one of
    them stops, the lock stays for the other, and that is no lease left behind."""
    lockdir = tmp_path / "shared" / "lockd"
    lockdir.mkdir(parents=True)
    disk = str(tmp_path / "quorum.raw")
    resource = lockdir / leases_mod.lease_name(disk)
    # stands in for this host's virtlockd: one shared lock on the disk's lease file
    virtlockd = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(resource), "read"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert virtlockd.stdout.readline().strip() == "locked"
        monkeypatch.setattr(leases_mod, "virtlockd_pids", lambda *a, **kw: {virtlockd.pid})
        with Connection(URI) as conn:
            cfg = LockConfig(manager="lockd", file_lockspace_dir=str(lockdir))
            a, b = shared_guest(conn, "shr-a", disk), shared_guest(conn, "shr-b", disk)
            a.create()
            b.create()
            rec = CheckpointRecorder(host="hv1")
            lc = Lifecycle(conn, rec, cfg, clock=FakeClock())
            (before,) = lc.probe(a)
            assert before["lock"] == "shared" and before["held_here"] is True and before["sharers"] == ["shr-b"]
            leases, ok = lc.verify(a, required=False)
            assert ok is True, rec.last()
            lc.destroy(a)
            released = rec.find("leases_released")
            assert released["ok"] is True, released
            assert "the shared lock stays for shr-b sharing it here" in released["detail"]
            # shr-b alone: the lock held here can now only be its own share
            (alone,) = lc.probe(b)
            assert alone["held_here"] is True and alone["sharers"] == []
            # nobody else shares it any more and the lock is still held after shr-b stopped: left behind
            lc.destroy(b)
            assert rec.find("leases_released")["ok"] is False
    finally:
        virtlockd.kill()
        virtlockd.wait()


class FailingResume(Guest):
    """A guest whose resume fails for another reason than a busy lease (QEMU refusing to continue)."""

    def resume(self):
        raise VirtError("cannot resume: internal error: unable to execute QEMU command 'cont'")


def test_a_failed_libxl_start_says_its_leases_go_with_the_destroyed_guest(hv):
    # libxl takes the leases when it creates the guest (libxlDomainStart), so the guest destroyed after a
    # failed start held them: they are released with it, not "never taken"
    clock = FakeClock()
    with Connection(URI) as conn:
        # libxl's lease timing on libvirt's test driver, which cannot start a guest paused (create, suspend)
        conn._profile = copy.copy(LIBXL)
        conn._profile.can_start_paused = False
        lc, rec = lifecycle(conn, clock)
        with pytest.raises(VirtError):
            lc.start(FailingResume(define(conn, name="lx")))
        destroyed = [c for c in rec.as_list() if c["name"] == "destroyed_paused"]
        assert destroyed and destroyed[0]["detail"] == "its leases, taken at creation by the libxl driver, go with it"
        assert "leases_acquired" in rec.names()


def test_a_resume_probes_the_leases_once(hv, monkeypatch):
    clock = FakeClock()
    with Connection(URI) as conn:
        lc, _rec = lifecycle(conn, clock)
        dom = define(conn, name="once")
        lc.start(dom, paused=True)
        calls = []
        real = lc.probe
        monkeypatch.setattr(lc, "probe", lambda d, inactive=False: calls.append(1) or real(d, inactive))
        lc.resume(dom)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and len(calls) == 1
