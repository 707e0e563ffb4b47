"""Lock config reading, lease naming and the F_GETLK probe against real locks held by another process."""

import errno
import hashlib
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt import leases
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    LockConfig,
    default_lease_target,
    disk_lease_resource,
    domain_lease_resources,
    ensure_lease_file,
    held_by_pids,
    lease_name,
    own_share,
    parse_libvirt_conf,
    probe_lock,
    probe_resources,
    read_host_lock_config,
    read_lock_config,
    share_users,
    ssh_reader,
    virtlockd_pids,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.leaseview import (
    blocks_dest,
    classify,
    dest_holds,
    not_released,
    source_keeps,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.profiles import QEMU
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import parse_xml
from ansible_collections.lockstep.virt.tests.unit.fakes.leases import HOLDER


@pytest.fixture
def holder():
    """Start a process that holds a POSIX lock on byte 0 of a file, like virtlockd does."""
    procs = []

    def start(path, kind="write"):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), kind], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "locked"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_parse_libvirt_conf():
    conf = parse_libvirt_conf(
        '# comment\nlock_manager = "lockd"\n  auto_disk_leases = 0  # off\n'
        'file_lockspace_dir = "/srv/x/lockd"\nnamespaces = [ "mount", "ipc" ]\n#user = "qemu"\n'
    )
    assert conf == {
        "lock_manager": "lockd",
        "auto_disk_leases": 0,
        "file_lockspace_dir": "/srv/x/lockd",
        "namespaces": ["mount", "ipc"],
    }


def write_confs(
    tmp_path, manager='lock_manager = "lockd"', lockd='auto_disk_leases = 1\nfile_lockspace_dir = "{ls}"\n'
):
    ls = tmp_path / "shared" / "lockd"
    ls.mkdir(parents=True)
    qemu = tmp_path / "qemu.conf"
    qemu.write_text(manager + "\n")
    lockd_conf = tmp_path / "qemu-lockd.conf"
    lockd_conf.write_text(lockd.format(ls=ls))
    return str(qemu), str(lockd_conf), str(ls)


def test_read_lock_config_from_files(tmp_path):
    qemu, lockd, ls = write_confs(tmp_path)
    cfg = read_lock_config(QEMU, lock_conf=qemu, lockd_conf=lockd)
    assert cfg.enabled and cfg.manager == "lockd" and cfg.probeable
    assert cfg.auto_disk_leases is True and cfg.require_lease_for_disks is False
    assert cfg.file_lockspace_dir == ls
    assert cfg.to_dict()["lockd_conf"] == lockd


def test_read_lock_config_env_override(tmp_path, monkeypatch):
    qemu, lockd, ls = write_confs(tmp_path)
    monkeypatch.setenv("LOCKSTEP_VIRT_LOCK_CONF", qemu)
    monkeypatch.setenv("LOCKSTEP_VIRT_LOCKD_CONF", lockd)
    cfg = read_lock_config(QEMU)
    assert cfg.file_lockspace_dir == ls and cfg.lock_conf == qemu


def test_lock_manager_off_or_missing_files(tmp_path):
    qemu, lockd, _ls = write_confs(tmp_path, manager='#lock_manager = "lockd"')
    cfg = read_lock_config(QEMU, lock_conf=qemu, lockd_conf=lockd)
    assert cfg.manager is None and not cfg.enabled and cfg.file_lockspace_dir is None
    cfg = read_lock_config(QEMU, lock_conf=str(tmp_path / "nope.conf"), lockd_conf=lockd)
    assert not cfg.enabled and cfg.errors == []


def test_remote_config_is_not_read(tmp_path):
    qemu, lockd, _ls = write_confs(tmp_path)
    cfg = read_lock_config(QEMU, lock_conf=qemu, lockd_conf=lockd, local=False)
    assert not cfg.enabled and not cfg.probeable and cfg.local is False


def test_auto_disk_leases_off_defaults_require_lease(tmp_path):
    qemu, lockd, _ls = write_confs(tmp_path, lockd="auto_disk_leases = 0\n")
    cfg = read_lock_config(QEMU, lock_conf=qemu, lockd_conf=lockd)
    assert cfg.auto_disk_leases is False and cfg.require_lease_for_disks is True
    assert disk_lease_resource("/img/a.qcow2", cfg) is None


def test_lease_naming():
    path = "/var/lib/lockstep-lab/shared/images/web1.qcow2"
    assert lease_name(path) == hashlib.sha256(path.encode()).hexdigest()
    indirect = LockConfig(manager="lockd", file_lockspace_dir="/srv/lockd")
    assert disk_lease_resource(path, indirect) == ("/srv/lockd", "/srv/lockd/" + lease_name(path))
    direct = LockConfig(manager="lockd")
    assert disk_lease_resource(path, direct) == ("", path)
    assert disk_lease_resource(path, LockConfig(manager=None)) is None
    sanlock = LockConfig(manager="sanlock", disk_lease_dir="/var/lib/libvirt/sanlock", auto_disk_leases=True)
    assert disk_lease_resource(path, sanlock)[1] == "/var/lib/libvirt/sanlock/" + hashlib.md5(path.encode()).hexdigest()


DOMAIN = """<domain type='qemu'><name>g</name><devices>
  <disk type='file' device='disk'><source file='/img/rw.qcow2'/><target dev='vda'/></disk>
  <disk type='file' device='disk'><source file='/img/ro.img'/><target dev='vdb'/><readonly/></disk>
  <disk type='block' device='disk'><source dev='/dev/sdz'/><target dev='vdc'/><shareable/></disk>
  <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/><target dev='vdd'/></disk>
  <disk type='volume' device='disk'><source pool='p' volume='v'/><target dev='vde'/></disk>
  <disk type='file' device='cdrom'><target dev='hda'/><readonly/></disk>
  <lease><lockspace>lockd</lockspace><key>vm-key</key><target path='/srv'/></lease>
</devices></domain>"""


def test_domain_lease_resources():
    cfg = LockConfig(manager="lockd", file_lockspace_dir="/srv/lockd")
    res = domain_lease_resources(parse_xml(DOMAIN), cfg, resolve_volume="/pools/{}/{}".format)
    by = dict((r["disk"] or r["key"], r) for r in res)
    assert sorted(by) == ["vda", "vdc", "vde", "vm-key"]  # read-only, network and empty disks are never leased
    assert by["vda"]["resource"] == "/srv/lockd/" + lease_name("/img/rw.qcow2")
    assert by["vdc"]["shared"] is True
    assert by["vde"]["path"] == "/pools/p/v"
    assert by["vm-key"]["resource"] == "/srv/lockd/vm-key" and by["vm-key"]["lockspace"] == "/srv/lockd"


def test_default_lease_target():
    assert default_lease_target(LockConfig(manager="lockd", file_lockspace_dir="/a/b/lockd")) == "/a/b"
    assert default_lease_target(LockConfig(manager="lockd", file_lockspace_dir="/a/b/other"), "lockd") == "/a/b"
    assert default_lease_target(LockConfig(manager="lockd")) is None


def test_probe_missing_file_is_not_held(tmp_path):
    assert probe_lock(str(tmp_path / "none")) == {"exists": False, "held": False, "holder_pid": None, "shared": False}


def test_probe_unlocked_file(tmp_path):
    f = tmp_path / "lease"
    f.write_text("")
    p = probe_lock(str(f))
    assert p["exists"] is True and p["held"] is False


def test_probe_write_lock_held_by_another_process(tmp_path, holder):
    f = tmp_path / "lease"
    proc = holder(f)
    p = probe_lock(str(f))
    assert p["held"] is True and p["holder_pid"] == proc.pid and p["shared"] is False
    proc.kill()
    proc.wait()
    assert probe_lock(str(f))["held"] is False


def test_probe_shared_lock(tmp_path, holder):
    f = tmp_path / "lease"
    proc = holder(f, "read")
    p = probe_lock(str(f))
    assert p["held"] is True and p["shared"] is True and p["holder_pid"] == proc.pid


def test_held_here_means_held_by_this_hosts_virtlockd(tmp_path, holder):
    f = tmp_path / "lease"
    proc = holder(f)
    cfg = LockConfig(manager="lockd", file_lockspace_dir=str(tmp_path))
    resources = [{"kind": "lease", "resource": str(f), "key": "lease", "disk": None, "shared": False}]
    here = probe_resources(resources, cfg, here_pids={proc.pid})[0]
    assert here["held"] is True and here["held_here"] is True and here["holder_pid"] == proc.pid
    elsewhere = probe_resources(resources, cfg, here_pids={os.getpid()})[0]
    assert elsewhere["held"] is True and elsewhere["held_here"] is False
    remote = probe_resources(resources, LockConfig(manager=None, local=False))[0]
    assert remote["held"] is None and remote["held_here"] is None


def _wait_for_exec(pid, comm, timeout=10.0):
    """Until the child has exec'd: before that its comm is still the parent's."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/{}/comm".format(pid)) as fh:
            if fh.read().strip() == comm:
                return
        time.sleep(0.01)
    raise AssertionError("process {} never became {}".format(pid, comm))


def test_virtlockd_pid_from_pidfile_and_proc(tmp_path):
    pidfile = tmp_path / "virtlockd.pid"
    pidfile.write_text("{}\n".format(os.getpid()))
    # our own process is not called virtlockd: the pidfile's pid is refused when /proc says so
    assert os.getpid() not in virtlockd_pids(pidfiles=(str(pidfile),), proc=str(tmp_path))
    os.symlink("/bin/sleep", str(tmp_path / "virtlockd"))
    fake = subprocess.Popen([str(tmp_path / "virtlockd"), "30"])
    try:
        _wait_for_exec(fake.pid, "virtlockd")
        pidfile.write_text("{}\n".format(fake.pid))
        # comm of a process started through the symlink is "virtlockd"
        assert virtlockd_pids(pidfiles=(str(pidfile),)) == {fake.pid}
        # no pid file: found by a /proc scan in our mount namespace
        assert fake.pid in virtlockd_pids(pidfiles=(str(tmp_path / "missing.pid"),))
    finally:
        fake.kill()
        fake.wait()


def test_ensure_lease_file(tmp_path):
    path = str(tmp_path / "key")
    assert ensure_lease_file(path) is True
    assert os.path.isfile(path) and (os.stat(path).st_mode & 0o777) == 0o600
    assert ensure_lease_file(path) is False
    with pytest.raises(OSError):
        ensure_lease_file(str(tmp_path / "no-dir" / "key"))


def test_describe_holder():
    assert leases.describe_holder({"held": False}) == "not held"
    assert "this host" in leases.describe_holder({"held": True, "held_here": True, "holder_pid": 5})
    assert "pid 7" in leases.describe_holder({"held": True, "held_here": False, "holder_pid": 7})


# --------------------------------------------------------------------------- shareable disks: shared locks
def shared_resource(path):
    return {"kind": "disk", "resource": str(path), "disk": "vdb", "path": "/img/quorum.raw", "shared": True}


def test_a_shared_lock_is_reported_as_shared_and_held_here_by_its_holder(tmp_path, holder):
    """virtlockd takes F_RDLCK for a shareable disk (virlockspace.c: virFileLock(fd, shared, 0, 1))."""
    f = tmp_path / "quorum"
    proc = holder(f, "read")
    cfg = LockConfig(manager="lockd", file_lockspace_dir=str(tmp_path))
    (r,) = probe_resources([shared_resource(f)], cfg, here_pids={proc.pid}, sharers=lambda path: ["g2"])
    assert r["held"] is True and r["lock"] == "shared" and r["held_here"] is True and r["sharers"] == ["g2"]
    assert own_share(r) is None  # held here, but also for g2: the lock cannot tell whose share it is
    (alone,) = probe_resources([shared_resource(f)], cfg, here_pids={proc.pid}, sharers=lambda path: [])
    assert own_share(alone) is True
    (excl,) = probe_resources([dict(shared_resource(f), shared=False)], cfg, here_pids={os.getpid()})
    assert excl["lock"] == "shared" and excl["sharers"] == [] and excl["held_here"] is False


def test_this_hosts_share_is_seen_behind_another_holders_shared_lock(tmp_path, holder):
    """F_GETLK names one conflicting lock only; the other holder's own share is read from its /proc files."""
    f = tmp_path / "quorum"
    first, second = holder(f, "read"), holder(f, "read")
    named = probe_lock(str(f))["holder_pid"]
    assert named in (first.pid, second.pid)
    hidden = second if named == first.pid else first
    assert held_by_pids(str(f), {hidden.pid}) == "shared"
    assert held_by_pids(str(f), {os.getpid()}) is None
    cfg = LockConfig(manager="lockd", file_lockspace_dir=str(tmp_path))
    (r,) = probe_resources([shared_resource(f)], cfg, here_pids={hidden.pid})
    assert r["holder_pid"] == named and r["held_here"] is True and r["lock"] == "shared"
    (gone,) = probe_resources([shared_resource(f)], cfg, here_pids={os.getpid()})
    assert gone["held"] is True and gone["held_here"] is False and own_share(gone) is False


def test_held_by_pids_reads_an_exclusive_lock_too(tmp_path, holder):
    f = tmp_path / "lease"
    proc = holder(f)
    assert held_by_pids(str(f), {proc.pid}) == "exclusive"
    assert held_by_pids(str(tmp_path / "none"), {proc.pid}) is None


@pytest.mark.parametrize(
    "probe, holder_is",
    [
        ({"shared": False, "held": True, "held_here": True, "lock": "exclusive"}, "source"),
        ({"shared": False, "held": True, "held_here": False, "lock": "exclusive"}, "other"),
        ({"shared": False, "held": True, "held_here": False, "lock": "shared"}, "other"),
        ({"shared": False, "held": False, "held_here": False, "lock": None}, None),
        ({"shared": True, "held": True, "held_here": True, "lock": "shared", "sharers": []}, "source"),
        ({"shared": True, "held": True, "held_here": True, "lock": "shared", "sharers": ["g2"]}, "source_shared"),
        ({"shared": True, "held": True, "held_here": False, "lock": "shared", "sharers": []}, "other"),
        ({"shared": True, "held": True, "held_here": False, "lock": "exclusive"}, "other"),
        ({"shared": True, "held": False, "held_here": False, "lock": None}, None),
    ],
)
def test_classify_tells_a_shared_lock_from_an_exclusive_holder(probe, holder_is):
    assert classify(probe) == holder_is


def test_what_each_holder_means_for_the_handoff():
    shared_kept = {"shared": True, "lock": "shared", "holder": "source_shared"}
    shared_other = {"shared": True, "lock": "shared", "holder": "other"}
    excl_other = {"shared": True, "lock": "exclusive", "holder": "other"}
    lease_other = {"shared": False, "lock": "exclusive", "holder": "other"}
    assert not not_released(shared_kept) and source_keeps(shared_kept) and dest_holds(shared_kept)
    assert dest_holds(shared_other) and not blocks_dest(shared_other)
    assert not dest_holds(excl_other) and blocks_dest(excl_other)
    assert dest_holds(lease_other) and blocks_dest(lease_other)
    assert not dest_holds({"shared": True, "lock": None, "holder": None})


class FakeDom:
    def __init__(self, name, state, disks):
        self._name, self._state, self._disks = name, state, disks

    def name(self):
        return self._name

    def isActive(self):
        return self._state != 5

    def state(self):
        return [self._state, 1]

    def XMLDesc(self, _flags=0):
        devices = "".join(
            "<disk type='file' device='disk'><source file='{}'/><target dev='vd{}'/>{}</disk>".format(
                path, "abcdef"[i], "<shareable/>" if shared else ""
            )
            for i, (path, shared) in enumerate(self._disks)
        )
        return "<domain><name>{}</name><devices>{}</devices></domain>".format(self._name, devices)


class FakeVirtConn:
    def __init__(self, doms):
        self.doms = doms

    def listAllDomains(self, _flags=0):
        return list(self.doms)


def test_share_users_are_the_other_running_guests_sharing_the_disk():
    q = "/img/quorum.raw"
    virt = FakeVirtConn(
        [
            FakeDom("me", 1, [(q, True)]),
            FakeDom("b", 1, [("/img/b.qcow2", False), (q, True)]),
            FakeDom("paused", 3, [(q, True)]),  # a paused QEMU guest released its leases
            FakeDom("off", 5, [(q, True)]),
            FakeDom("not-shared", 1, [(q, False)]),
            FakeDom("other-disk", 1, [("/img/x.raw", True)]),
        ]
    )
    assert share_users(virt, exclude="me")(q) == ["b"]
    assert share_users(virt, exclude="me", paused_holds=True)(q) == ["b", "paused"]  # libxl keeps them


# --------------------------------------------------------------------------- the destination's configuration
class Run:
    def __init__(self, answers):
        self.answers, self.argvs = dict(answers), []

    def __call__(self, argv, **_kw):
        self.argvs.append(argv)
        for path, (rc, out, err) in self.answers.items():
            if path in argv[-1]:
                return subprocess.CompletedProcess(argv, rc, out, err)
        return subprocess.CompletedProcess(argv, 2, "", "")


def test_ssh_reader_uses_the_uris_ssh_settings_and_tells_missing_from_unreachable():
    run = Run({"/etc/a.conf": (0, "x = 1\n", ""), "/etc/b.conf": (255, "", "ssh: connect: refused\n")})
    read = ssh_reader("qemu+ssh://root@hv2:2222/system?keyfile=/k/id&known_hosts=/k/kh&no_verify=1", run=run)
    assert read("/etc/a.conf") == "x = 1\n"
    argv = run.argvs[0]
    assert argv[:2] == ["ssh", "-T"] and "BatchMode=yes" in argv
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "root"
    assert argv[argv.index("-i") + 1] == "/k/id" and "UserKnownHostsFile=/k/kh" in argv
    assert "StrictHostKeyChecking=no" in argv and argv[-2] == "hv2"
    with pytest.raises(OSError) as missing:
        read("/etc/none.conf")
    assert missing.value.errno == errno.ENOENT
    with pytest.raises(OSError, match="ssh: connect: refused") as broken:
        read("/etc/b.conf")
    assert broken.value.errno == errno.EIO
    assert ssh_reader("qemu+tls://hv2/system") is None and ssh_reader("qemu:///system") is None


class Conn:
    def __init__(self, uri, local=False):
        self.uri, self.local, self.hostname, self.profile = uri, local, "hv2", QEMU


def test_read_host_lock_config_reads_a_remote_hosts_files_with_the_same_reader(tmp_path, monkeypatch):
    qemu, lockd, ls = write_confs(tmp_path)
    # the environment overrides name files here, never the destination's
    monkeypatch.setenv("LOCKSTEP_VIRT_LOCK_CONF", str(tmp_path / "here.conf"))
    files = {QEMU.lock_conf: open(qemu).read(), QEMU.lockd_conf: open(lockd).read()}

    def reader(path):
        if path not in files:
            raise OSError(errno.ENOENT, "missing")
        return files[path]

    cfg = read_host_lock_config(Conn("qemu+ssh://hv2/system"), make_reader=lambda uri: reader)
    assert cfg.manager == "lockd" and cfg.file_lockspace_dir == ls and cfg.errors == []
    assert cfg.local is False and not cfg.probeable and cfg.lock_conf == QEMU.lock_conf
    files[QEMU.lock_conf] = "# nothing\n"
    assert read_host_lock_config(Conn("qemu+ssh://hv2/system"), make_reader=lambda uri: reader).enabled is False

    def broken(path):
        raise OSError(errno.EIO, "over ssh to hv2: Permission denied")

    cfg = read_host_lock_config(Conn("qemu+ssh://hv2/system"), make_reader=lambda uri: broken)
    assert cfg.manager is None and "Permission denied" in cfg.errors[0]
    cfg = read_host_lock_config(Conn("qemu+tls://hv2/system"))
    assert cfg.readable is False and "cannot be read over qemu+tls://hv2/system" in cfg.errors[0]
