"""The sanlock lease probe, fed with sanlock 3.8.5 output captured on the lab (see sanlock_output/README.md)."""

import hashlib
import os
import struct
import subprocess

import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    LockConfig,
    describe_holder,
    domain_lease_resources,
    probe_resources,
    public_lease,
    read_lock_config,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.leaseview import (
    LeaseView,
    dest_holds,
    not_released,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.sanlock import (
    DISK_LOCKSPACE,
    SanlockProbe,
    disk_lease,
    disk_resource_name,
    host_name_of,
    parse_client_status,
    parse_direct_dump,
    parse_host_status,
    parse_inquire,
    read_leader,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import parse_xml

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sanlock_output")
SHARED = "/var/lib/lockstep-lab-3/shared"
DISK_DIR = SHARED + "/sanlock"
DISK_PATH = SHARED + "/images/cap1.qcow2"
DISK_RES = "429f04f69eeb4bce71b349552fe5ca43"
DISK_FILE = DISK_DIR + "/" + DISK_RES
VM_FILE = SHARED + "/sanlock-vm/cap1-lease"
DISK_LS_FILE = DISK_DIR + "/__LIBVIRT__DISKS__"
VM_LS_FILE = SHARED + "/sanlock-vm/lockspace"
HV1 = "68adc899-19dc-4d61-9535-aea9d98ee395.hv1"
HV2 = "69092223-dbf5-411a-9d08-94f4df1d9e8d.hv2"


def captured(name):
    with open(os.path.join(HERE, name)) as fh:
        return fh.read()


class Runner:
    """Answers ``sanlock`` commands with captured output; anything else fails as sanlock does."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, argv):
        self.calls.append(argv[1:])
        key = " ".join(argv[1:])
        if key in self.answers:
            out = self.answers[key]
            return (1, "", "") if out is None else (0, out, "")
        return 1, "", "Device {} not found.".format(key.split()[-1].split(":")[0])


def dump_cmd(path, offset=0):
    return "direct dump {}:{}".format(path, offset)


def lab_files(*missing):
    files = {DISK_FILE, VM_FILE, DISK_LS_FILE, VM_LS_FILE} - set(missing)
    return lambda path: path in files


def domain_xml():
    return parse_xml(
        "<domain type='kvm'><name>cap1</name><devices>"
        "<disk type='file' device='disk'><source file='{}'/><target dev='vda'/></disk>"
        "<disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda'/><readonly/></disk>"
        "<lease><lockspace>lockstep_vm</lockspace><key>cap1-lease</key><target path='{}' offset='0'/></lease>"
        "</devices></domain>".format(DISK_PATH, VM_FILE),
        "domain",
    )


SANLOCK_CONFIG = LockConfig(manager="sanlock", auto_disk_leases=True, disk_lease_dir=DISK_DIR, host_id=2)


# --------------------------------------------------------------------------- naming and config
def test_disk_lease_names_follow_libvirts_sanlock_plugin():
    assert disk_resource_name(DISK_PATH) == DISK_RES == hashlib.md5(DISK_PATH.encode()).hexdigest()
    assert disk_lease(DISK_PATH, DISK_DIR) == (DISK_LOCKSPACE, DISK_RES, DISK_FILE, 0)


def test_read_lock_config_reads_qemu_sanlock_conf(tmp_path):
    qemu = tmp_path / "qemu.conf"
    qemu.write_text('lock_manager = "sanlock"\n')
    conf = tmp_path / "qemu-sanlock.conf"
    conf.write_text('auto_disk_leases = 1\ndisk_lease_dir = "{}"\nhost_id = 2\nuser = "root"\n'.format(DISK_DIR))
    cfg = read_lock_config(lock_conf=str(qemu), lockd_conf=str(conf))
    assert cfg.manager == "sanlock" and cfg.enabled and cfg.probeable
    assert cfg.auto_disk_leases is True and cfg.require_lease_for_disks is False
    assert cfg.disk_lease_dir == DISK_DIR and cfg.host_id == 2
    assert cfg.to_dict()["host_id"] == 2
    # sanlock's own defaults: no automatic disk leases, libvirt's lease directory
    conf.write_text("host_id = 5\n")
    cfg = read_lock_config(lock_conf=str(qemu), lockd_conf=str(conf))
    assert cfg.auto_disk_leases is False and cfg.require_lease_for_disks is True
    assert cfg.disk_lease_dir == "/var/lib/libvirt/sanlock" and cfg.host_id == 5


def test_domain_lease_resources_name_sanlock_resources():
    res = domain_lease_resources(domain_xml(), SANLOCK_CONFIG)
    assert [(r["kind"], r["resource"], r["sanlock"]) for r in res] == [
        ("disk", DISK_FILE, (DISK_LOCKSPACE, DISK_RES, DISK_FILE, 0)),
        ("lease", VM_FILE, ("lockstep_vm", "cap1-lease", VM_FILE, 0)),
    ]
    assert res[0]["lockspace"] == DISK_DIR and res[1]["key"] == "cap1-lease"


# --------------------------------------------------------------------------- parsing real output
def test_parse_client_status_of_a_host_running_a_guest():
    st = parse_client_status(captured("status_hv1_running.txt"))
    assert st["daemon"] == HV1
    assert st["clients"] == {10719: "cap1"}
    assert [(ls["lockspace"], ls["host_id"], ls["path"], ls["offset"]) for ls in st["lockspaces"]] == [
        ("lockstep_vm", 1, VM_LS_FILE, 0),
        (DISK_LOCKSPACE, 1, DISK_LS_FILE, 0),
    ]
    assert st["resources"] == [
        {"lockspace": DISK_LOCKSPACE, "name": DISK_RES, "path": DISK_FILE, "offset": 0, "lver": 1, "pid": 10719},
        {"lockspace": "lockstep_vm", "name": "cap1-lease", "path": VM_FILE, "offset": 0, "lver": 1, "pid": 10719},
    ]


def test_parse_client_status_after_suspend_and_after_migration():
    suspended = parse_client_status(captured("status_hv1_suspended.txt"))
    assert suspended["resources"] == [] and suspended["clients"] == {10719: "cap1"}
    moved = parse_client_status(captured("status_hv2_after_migrate.txt"))
    assert moved["daemon"] == HV2
    assert {(r["name"], r["lver"], r["pid"]) for r in moved["resources"]} == {
        (DISK_RES, 3, 11605),
        ("cap1-lease", 3, 11605),
    }
    assert {ls["host_id"] for ls in moved["lockspaces"]} == {2}


def test_parse_inquire():
    assert [(r["lockspace"], r["name"], r["path"], r["lver"]) for r in parse_inquire(captured("inquire_hv1.txt"))] == [
        ("lockstep_vm", "cap1-lease", VM_FILE, 1),
        (DISK_LOCKSPACE, DISK_RES, DISK_FILE, 1),
    ]


def test_parse_direct_dump_of_leases_and_lockspaces():
    (held,) = parse_direct_dump(captured("dump_disk_held.txt"))
    assert held == {
        "offset": 0,
        "lockspace": DISK_LOCKSPACE,
        "resource": DISK_RES,
        "timestamp": 325,
        "owner_id": 1,
        "owner_generation": 1,
        "lver": 1,
    }
    (released,) = parse_direct_dump(captured("dump_disk_released.txt"))
    assert released["timestamp"] == 0 and released["owner_id"] == 1  # the last owner stays on disk
    (moved,) = parse_direct_dump(captured("dump_vm_held_by_hv2.txt"))
    assert (moved["resource"], moved["owner_id"], moved["lver"]) == ("cap1-lease", 2, 3)
    hosts = parse_direct_dump(captured("dump_disk_lockspace.txt"))
    assert [(h["offset"], h["resource"], h["owner_id"], h["lver"]) for h in hosts] == [
        (0, HV1, 1, None),
        (512, HV2, 2, None),
    ]


def test_parse_host_status():
    hosts = parse_host_status(captured("host_status_D_hv2.txt"))
    assert sorted(hosts) == [1, 2]
    assert hosts[1]["owner_name"] == HV1 and hosts[1]["owner_id"] == 1 and hosts[1]["timestamp"] == 326
    assert hosts[2]["owner_name"] == HV2 and hosts[2]["io_timeout"] == 10
    assert parse_host_status(captured("host_status_hv2.txt")) == {1: {"timestamp": 326}, 2: {"timestamp": 306}}


def test_host_name_of_a_sanlock_daemon_name():
    assert host_name_of(HV1) == "hv1"
    assert host_name_of("a1b2c3d4-0000-1111-2222-333344445555.node.example.org") == "node.example.org"
    assert host_name_of("storage-host-7") == "storage-host-7"  # set with sanlock daemon -e
    assert host_name_of(None) is None


# --------------------------------------------------------------------------- the probe
def hv1_runner():
    return Runner(
        {
            "client status": captured("status_hv1_running.txt"),
            dump_cmd(DISK_LS_FILE): captured("dump_disk_lockspace.txt"),
            dump_cmd(VM_LS_FILE): captured("dump_vm_lockspace.txt"),
        }
    )


def hv2_runner(disk_dump="dump_disk_held.txt", vm_dump="dump_vm_held.txt", status="status_hv2_idle.txt"):
    return Runner(
        {
            "client status": captured(status) if status else None,
            dump_cmd(DISK_FILE): captured(disk_dump) if disk_dump else None,
            dump_cmd(VM_FILE): captured(vm_dump) if vm_dump else None,
            dump_cmd(DISK_LS_FILE): captured("dump_disk_lockspace.txt"),
            dump_cmd(VM_LS_FILE): captured("dump_vm_lockspace.txt"),
        }
    )


def test_probe_on_the_holding_host_uses_its_daemon():
    runner = hv1_runner()
    probe = SanlockProbe(host_id=1, host_name="hv1", disk_lease_dir=DISK_DIR, runner=runner, exists=lab_files())
    p = probe.probe(DISK_LOCKSPACE, DISK_RES, DISK_FILE, 0)
    assert p["held"] is True and p["held_here"] is True
    assert (p["holder_pid"], p["holder_host"], p["holder_host_id"], p["lver"]) == (10719, "hv1", 1, 1)
    assert p["how"] == "sanlock client status"
    assert [c for c in runner.calls if c[0] == "direct"] == []  # this host's daemon answered: no disk read


def test_probe_on_another_host_reads_the_lease_area_and_names_the_holder():
    probe = SanlockProbe(host_id=2, host_name="hv2", disk_lease_dir=DISK_DIR, runner=hv2_runner(), exists=lab_files())
    for args in ((DISK_LOCKSPACE, DISK_RES, DISK_FILE, 0), ("lockstep_vm", "cap1-lease", VM_FILE, 0)):
        p = probe.probe(*args)
        assert p["held"] is True and p["held_here"] is False, p
        assert (p["holder_host"], p["holder_host_id"], p["holder_pid"]) == ("hv1", 1, None)
        assert p["how"] == "sanlock direct dump"


def test_probe_of_a_released_lease_and_of_a_lease_file_never_made():
    probe = SanlockProbe(
        host_id=2,
        host_name="hv2",
        disk_lease_dir=DISK_DIR,
        runner=hv2_runner(disk_dump="dump_disk_released.txt"),
        exists=lab_files(VM_FILE),
    )
    p = probe.probe(DISK_LOCKSPACE, DISK_RES, DISK_FILE, 0)
    assert (p["held"], p["held_here"], p["holder_host"]) == (False, False, None)
    p = probe.probe("lockstep_vm", "cap1-lease", VM_FILE, 0)
    assert (p["held"], p["held_here"], p["how"]) == (False, False, "no lease file")


def test_probe_reports_unknown_when_nothing_can_be_read():
    probe = SanlockProbe(
        host_id=2,
        host_name="hv2",
        disk_lease_dir=DISK_DIR,
        runner=hv2_runner(disk_dump=None, status=None),
        exists=lab_files(),
    )
    p = probe.probe(DISK_LOCKSPACE, DISK_RES, DISK_FILE, 0)
    assert p["held"] is None and p["held_here"] is None and p["error"]
    assert any("client status" in e for e in probe.errors)
    # the daemon is down but the lease area is readable: held by hv1, and not by this host (host_id 2)
    probe = SanlockProbe(
        host_id=2,
        host_name="hv2",
        disk_lease_dir=DISK_DIR,
        runner=hv2_runner(status=None),
        exists=lab_files(),
    )
    p = probe.probe(DISK_LOCKSPACE, DISK_RES, DISK_FILE, 0)
    assert (p["held"], p["held_here"], p["holder_host"]) == (True, False, "hv1")


def test_probe_without_the_sanlock_command_is_unknown():
    probe = SanlockProbe(host_id=2, disk_lease_dir=DISK_DIR, runner=hv2_runner(), exists=lab_files())
    probe.binary = None
    p = probe.probe(DISK_LOCKSPACE, DISK_RES, DISK_FILE, 0)
    assert p["held"] is None and "not installed" in p["error"]


def test_probe_resources_and_public_leases_on_a_sanlock_host():
    probe = SanlockProbe(host_id=2, host_name="hv2", disk_lease_dir=DISK_DIR, runner=hv2_runner(), exists=lab_files())
    probed = probe_resources(domain_lease_resources(domain_xml(), SANLOCK_CONFIG), SANLOCK_CONFIG, sanlock_probe=probe)
    assert [(r["held"], r["held_here"], r["holder_host"], r["holder_host_id"]) for r in probed] == [
        (True, False, "hv1", 1),
        (True, False, "hv1", 1),
    ]
    assert public_lease(probed[0])["holder_host"] == "hv1"
    assert describe_holder(probed[0]) == "held by hv1 (sanlock host_id 1)"
    unknown = dict(probed[0], held=None, probe_error="sanlock client status: no daemon")
    assert describe_holder(unknown).startswith("unknown (cannot be verified")


# --------------------------------------------------------------------------- migrate's view
def view(runner, files=None):
    probe = SanlockProbe(
        host_id=1, host_name="hv1", disk_lease_dir=DISK_DIR, runner=runner, exists=files or lab_files()
    )
    v = LeaseView(SANLOCK_CONFIG, sanlock_probe=probe)
    v.source_host, v.dest_host = "hv1", "hv2"
    return v


def test_lease_view_holders_source_dest_none_unknown():
    resources = domain_lease_resources(domain_xml(), SANLOCK_CONFIG)
    before = view(hv1_runner()).probe(resources)
    assert [r["holder"] for r in before] == ["source", "source"]
    assert all(not_released(r) for r in before)
    # the source's daemon lists nothing and the lease areas say: held by hv2 (the destination)
    after = view(
        Runner(
            {
                "client status": captured("status_hv1_suspended.txt"),
                dump_cmd(DISK_FILE): captured("dump_disk_released.txt"),
                dump_cmd(VM_FILE): captured("dump_vm_held_by_hv2.txt"),
                dump_cmd(VM_LS_FILE): captured("dump_vm_lockspace.txt"),
            }
        )
    ).probe(resources)
    assert [(r["holder"], r["held"], r["holder_host"]) for r in after] == [(None, False, None), ("dest", True, "hv2")]
    assert dest_holds(after[1]) and not not_released(after[0])
    # nothing readable: unknown, never taken as released
    lost = view(Runner({})).probe(resources)
    assert [r["holder"] for r in lost] == ["unknown", "unknown"]
    assert all(not_released(r) and not dest_holds(r) for r in lost)


def test_lease_view_a_third_host_is_other_and_not_the_destination():
    resources = domain_lease_resources(domain_xml(), SANLOCK_CONFIG)
    v = view(
        Runner(
            {
                "client status": captured("status_hv1_suspended.txt"),
                dump_cmd(VM_FILE): captured("dump_vm_held_by_hv2.txt"),
                dump_cmd(VM_LS_FILE): captured("dump_vm_lockspace.txt"),
            }
        ),
        files=lab_files(DISK_FILE),
    )
    v.dest_host = "hv3"
    probed = v.probe(resources)
    assert [(r["holder"], r["holder_host"]) for r in probed] == [(None, None), ("other", "hv2")]
    assert not dest_holds(probed[1])


def test_lockd_view_keeps_other_as_the_destinations_evidence():
    assert dest_holds({"holder": "other"}) is True
    assert dest_holds({"holder": "other", "sanlock": ("ls", "k", "/p", 0)}) is False


def _init_lease(path, lockspace, name):
    """A resource lease area made by sanlock itself (``sanlock direct init``), as the lab makes them."""
    with open(path, "wb") as fh:
        fh.truncate(1024 * 1024)
    spec = "{}:{}:{}:0".format(lockspace, name, path)
    try:
        res = subprocess.run(["sanlock", "direct", "init", "-r", spec], capture_output=True, text=True, check=False)
    except OSError:
        pytest.skip("the sanlock command is not installed")
    assert res.returncode == 0, res.stderr


def test_read_leader_reads_what_sanlock_wrote_and_the_probe_uses_it(tmp_path):
    path = str(tmp_path / "vm1-lease")
    _init_lease(path, "lockstep_vm", "vm1-lease")
    row = read_leader(path, 0)
    if row is None:
        with pytest.raises(OSError):  # only a filesystem without O_DIRECT may leave it to sanlock direct dump
            os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
        pytest.skip("no O_DIRECT on " + str(tmp_path))
    assert (row["lockspace"], row["resource"], row["timestamp"], row["owner_id"], row["lver"]) == (
        "lockstep_vm",
        "vm1-lease",
        0,
        0,
        0,
    )
    # an owned leader (what an acquire writes: owner host_id 2, generation 3, lver 7, a timestamp)
    with open(path, "r+b") as fh:
        raw = bytearray(fh.read(512))
        struct.pack_into("<QQQ", raw, 32, 2, 3, 7)
        struct.pack_into("<Q", raw, 152, 12345)
        fh.seek(0)
        fh.write(raw)
    row = read_leader(path, 0)
    assert (row["owner_id"], row["owner_generation"], row["lver"], row["timestamp"]) == (2, 3, 7, 12345)
    assert read_leader(path, 512) is None  # not a leader there (and unaligned for O_DIRECT)
    assert read_leader(str(tmp_path / "missing"), 0) is None

    runner = hv2_runner()
    probe = SanlockProbe(host_id=1, host_name="hv1", runner=runner, leader_reader=read_leader, exists=os.path.exists)
    p = probe.probe("lockstep_vm", "vm1-lease", path, 0)
    assert p["held"] is True and p["holder_host_id"] == 2 and p["lver"] == 7, p
    assert p["how"] == "leader record (O_DIRECT read)"
    assert not [c for c in runner.calls if c[:3] == ["direct", "dump", path + ":0"]]
