"""Lock config reading, lease naming and the F_GETLK probe against real locks held by another process."""

import hashlib
import os
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt import leases
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    LockConfig,
    default_lease_target,
    disk_lease_resource,
    domain_lease_resources,
    ensure_lease_file,
    lease_name,
    parse_libvirt_conf,
    probe_lock,
    probe_resources,
    read_lock_config,
    virtlockd_pids,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.profiles import QEMU
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import parse_xml

HOLDER = textwrap.dedent(
    """
    import fcntl, os, struct, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    kind = fcntl.F_RDLCK if sys.argv[2] == "read" else fcntl.F_WRLCK
    fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack("hhqqi", kind, 0, 0, 1, 0).ljust(32, b"\\0"))
    print("locked", flush=True)
    time.sleep(60)
    """
)


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
