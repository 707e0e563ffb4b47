"""sanlock as the lock manager, on the lab's real hosts: lease_info, domain_info and migrate name the holder by host.

Runs only on a lab brought up with ``tests/lab/lab up --lock-manager sanlock`` (skipped otherwise): every host
runs its own sanlock daemon (no watchdog), libvirt's plugin takes automatic disk leases in the lockspace
``__LIBVIRT__DISKS__`` and explicit ``<lease>`` elements in the lab's lockspace ``lockstep_vm``.

What the collection reports is checked against sanlock itself: ``sanlock client status`` on each host (which
process of which host holds what) and ``sanlock direct dump`` of the lease on shared storage (owner host_id).
"""

import hashlib
import json
import os
import re
import subprocess

import pytest
from labkit import LAB, Lab, define

LAB_LOCK_MANAGER = "sanlock"  # what conftest checks; `slab` skips with the reason when the lab is down too
LEASE_INFO = "lockstep.virt.lease_info"
DOMAIN_INFO = "lockstep.virt.domain_info"
MIGRATE = "lockstep.virt.migrate"
DISK_LOCKSPACE = "__LIBVIRT__DISKS__"
VM_LOCKSPACE = "lockstep_vm"


@pytest.fixture(scope="module")
def slab():
    res = subprocess.run([LAB, "status", "--json"], capture_output=True, text=True, check=False)
    status = json.loads(res.stdout) if res.stdout.strip() else {"up": False}
    if not status.get("up"):
        pytest.skip("the lab is not up (tests/lab/lab up --lock-manager sanlock)")
    if status.get("lock_manager") != "sanlock":
        pytest.skip(
            "the lab runs lock manager {}, not sanlock (tests/lab/lab up --lock-manager sanlock)".format(
                status.get("lock_manager", "lockd")
            )
        )
    lab = Lab(status)
    lab.sanlock = status["sanlock"]
    return lab


def held_here(lab, host):
    """sanlock client status on ``host``: {(lockspace, resource): pid} of the leases its daemon holds."""
    out = lab.exec(host, "sanlock", "client", "status").stdout
    held = {}
    for line in out.splitlines():
        m = re.match(r"^r (\S+?):(\S+?):\S+ p (\d+)$", line)
        if m:
            held[(m.group(1), m.group(2))] = int(m.group(3))
    return held


def owner_on_disk(lab, lease_file):
    """(owner host_id, timestamp) of a lease's leader record, as ``sanlock direct dump`` shows it."""
    out = lab.exec("hv2", "sanlock", "direct", "dump", lease_file + ":0").stdout
    row = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()][0]
    return int(row[4]), int(row[3])


def guest_xml(name, disk=None, lease=None):
    """32 MiB, BIOS only (SeaBIOS idles): ``disk`` a qcow2 on the shared directory (an automatic disk lease),
    ``lease`` (lockspace, key, target path) an explicit ``<lease>``."""
    devices = "<graphics type='vnc' listen='127.0.0.1'/>"
    if disk:
        devices = (
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
            "<source file='{}'/><target dev='vda' bus='virtio'/></disk>".format(disk)
        ) + devices
    if lease:
        devices = (
            "<lease><lockspace>{}</lockspace><key>{}</key><target path='{}' offset='0'/></lease>".format(*lease)
        ) + devices
    return (
        "<domain type='qemu'><name>{}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>"
        "<on_poweroff>destroy</on_poweroff><devices>{}</devices></domain>".format(name, devices)
    )


@pytest.fixture
def guests(slab, guest_name):
    """Two guests defined and started on hv1: ``disk`` with an automatic disk lease, ``lease`` with an
    explicit ``<lease>`` in the lab's VM lockspace (its lease area made with ``sanlock direct init``)."""
    lab = slab
    disk = lab.new_disk(guest_name + "-d")
    disk_res = hashlib.md5(disk.encode()).hexdigest()
    disk_lease = os.path.join(lab.sanlock["disk_lease_dir"], disk_res)
    key = guest_name + "-key"
    vm_lease = os.path.join(lab.sanlock["vm_lease_dir"], key)
    with open(vm_lease, "wb") as fh:
        fh.truncate(1024 * 1024)
    lab.exec("hv1", "sanlock", "direct", "init", "-r", "{}:{}:{}:0".format(VM_LOCKSPACE, key, vm_lease))
    g = {
        "disk": {"name": guest_name + "-d", "disk": disk, "res": (DISK_LOCKSPACE, disk_res), "file": disk_lease},
        "lease": {"name": guest_name + "-l", "key": key, "res": (VM_LOCKSPACE, key), "file": vm_lease},
    }
    g["disk"]["xml"] = guest_xml(g["disk"]["name"], disk=disk)
    g["lease"]["xml"] = guest_xml(g["lease"]["name"], lease=(VM_LOCKSPACE, key, vm_lease))
    try:
        for x in g.values():
            define(lab, "hv1", x["xml"])
            res = lab.virsh("hv1", "start", x["name"], check=False)
            assert res.returncode == 0, res.stderr
        yield g
    finally:
        for x in g.values():
            lab.cleanup_domain(x["name"])
        lab.cleanup_domain(guest_name + "-c")
        for path in (disk, disk_lease, vm_lease):
            if os.path.exists(path):
                os.unlink(path)


def leases_of(result, name):
    (guest,) = [x for x in result["guests"] if x["name"] == name]
    return guest


def test_lease_info_names_the_holder_by_host_and_a_second_start_is_refused(slab, guests):
    lab = slab
    on_hv1 = held_here(lab, "hv1")
    for x in guests.values():
        assert x["res"] in on_hv1, (x["res"], on_hv1)  # sanlock itself: hv1's daemon holds both

    info = lab.module("hv1", LEASE_INFO, {"names": [x["name"] for x in guests.values()]})
    lm = info["lock_manager"]
    assert lm["manager"] == "sanlock" and lm["probeable"] is True and lm["enabled"] is True
    assert lm["host_id"] == 1 and lm["disk_lease_dir"] == lab.sanlock["disk_lease_dir"]
    assert lm["sanlock"]["answers"] is True
    spaces = {ls["name"]: ls for ls in lm["sanlock"]["lockspaces"]}
    assert spaces[DISK_LOCKSPACE]["host_id"] == 1 and spaces[VM_LOCKSPACE]["host_id"] == 1
    assert {h["host_id"]: h["host"] for h in spaces[DISK_LOCKSPACE]["hosts"]} == {1: "hv1", 2: "hv2"}

    disk_guest = leases_of(info, guests["disk"]["name"])
    (disk_lease,) = disk_guest["leases"]
    assert disk_lease["kind"] == "disk" and disk_lease["disk"] == "vda"
    assert disk_lease["resource"] == guests["disk"]["file"]  # <disk_lease_dir>/<md5 of the path>
    lease_guest = leases_of(info, guests["lease"]["name"])
    (vm_lease,) = lease_guest["leases"]
    assert vm_lease["kind"] == "lease" and vm_lease["key"] == guests["lease"]["key"]
    assert vm_lease["resource"] == guests["lease"]["file"]
    for x, lease in ((guests["disk"], disk_lease), (guests["lease"], vm_lease)):
        assert lease["held"] is True and lease["held_here"] is True, lease
        assert lease["holder_host"] == "hv1", lease
        assert lease["holder_pid"] == on_hv1[x["res"]], lease  # the QEMU pid sanlock lists
    assert info["unleased_running"] == []

    facts = lab.module("hv1", DOMAIN_INFO, {"name": guests["disk"]["name"]})
    (dom,) = facts["domains"]
    assert [(r["held"], r["held_here"], r["holder_host"]) for r in dom["leases"]] == [(True, True, "hv1")]

    # hv2: the same guests defined there, shut off; their leases are held, by hv1 (read from the lease area)
    for x in guests.values():
        define(lab, "hv2", x["xml"])
    on2 = lab.module("hv2", LEASE_INFO, {"names": [x["name"] for x in guests.values()]})
    assert on2["lock_manager"]["host_id"] == 2
    for x in guests.values():
        (lease,) = leases_of(on2, x["name"])["leases"]
        assert lease["held"] is True and lease["held_here"] is False, lease
        assert lease["holder_host"] == "hv1", lease
        assert owner_on_disk(lab, x["file"])[0] == 1

    # a second start on hv2 is refused by sanlock: the lease is busy
    res = lab.virsh("hv2", "start", guests["lease"]["name"], check=False)
    assert res.returncode != 0
    assert "resource busy" in res.stderr and "held by another host" in res.stderr, res.stderr
    # the disk guest is refused too (QEMU's own image lock may answer first); a guest naming the disk's
    # sanlock lease explicitly shows sanlock refusing that very lease
    res = lab.virsh("hv2", "start", guests["disk"]["name"], check=False)
    assert res.returncode != 0, res.stdout
    third = guests["disk"]["name"][:-2] + "-c"
    define(lab, "hv2", guest_xml(third, lease=guests["disk"]["res"] + (guests["disk"]["file"],)))
    res = lab.virsh("hv2", "start", third, check=False)
    assert res.returncode != 0
    assert "resource busy" in res.stderr and "held by another host" in res.stderr, res.stderr
    assert held_here(lab, "hv2") == {}
    for x in guests.values():
        assert lab.domain_state("hv1", x["name"]) == "running"
        assert lab.domain_state("hv2", x["name"]) == "shut off"


def test_migrate_hands_the_leases_to_hv2_verified(slab, guests):
    lab = slab
    for x in guests.values():
        res = lab.module(
            "hv1",
            MIGRATE,
            {"name": x["name"], "dest_uri": "qemu+ssh://hv2/system", "unsafe": True},
        )
        assert not res.get("failed") and "msg" not in res, res.get("msg")
        assert res["changed"] is True
        cps = {c["name"]: c for c in res["lock_checkpoints"]}
        for c in res["lock_checkpoints"]:
            assert c["ok"] is True, c
            for lease in c.get("leases", []):
                assert lease["holder"] != "unknown", c
        inquire = cps["begin/inquire"]
        assert inquire["verified"] is True and "sanlock" in inquire["check"]
        assert [(r["holder"], r["holder_host"]) for r in inquire["leases"]] == [("source", "hv1")]
        released = cps["perform/source_released"]
        assert released["verified"] is True
        assert [r["held"] for r in released["leases"]] == [False], released
        acquired = cps["finish/dest_acquired"]
        assert acquired["verified"] is True and "sanlock" in acquired["check"]
        assert [(r["holder"], r["holder_host"]) for r in acquired["leases"]] == [("dest", "hv2")], acquired

    on_hv2 = held_here(lab, "hv2")
    assert held_here(lab, "hv1") == {}
    for x in guests.values():
        assert x["res"] in on_hv2
        assert owner_on_disk(lab, x["file"])[0] == 2
        assert lab.domain_state("hv2", x["name"]) == "running"

    info2 = lab.module("hv2", LEASE_INFO, {"names": [x["name"] for x in guests.values()]})
    for x in guests.values():
        (lease,) = leases_of(info2, x["name"])["leases"]
        assert lease["held"] is True and lease["held_here"] is True, lease
        assert lease["holder_host"] == "hv2" and lease["holder_pid"] == on_hv2[x["res"]], lease
    # hv1 holds none: its sanlock lists no lease, and lease_info there sees the guests' leases held by hv2
    for x in guests.values():
        define(lab, "hv1", x["xml"])
    info1 = lab.module("hv1", LEASE_INFO, {"names": [x["name"] for x in guests.values()]})
    for x in guests.values():
        guest = leases_of(info1, x["name"])
        assert guest["state"] == "shutoff"
        (lease,) = guest["leases"]
        assert lease["held"] is True and lease["held_here"] is False and lease["holder_host"] == "hv2", lease


def test_domain_start_with_lock_required_verifies_sanlock_leases(slab, guest_name):
    """lockstep.virt.domain with ``lock.required``: the start on hv1 is verified through sanlock; the same
    guest started on hv2 is refused as busy, and the error names hv1 as the holder."""
    lab = slab
    key = guest_name + "-key"
    vm_lease = os.path.join(lab.sanlock["vm_lease_dir"], key)
    with open(vm_lease, "wb") as fh:
        fh.truncate(1024 * 1024)
    disk = lab.new_disk(guest_name)
    disk_lease = os.path.join(lab.sanlock["disk_lease_dir"], hashlib.md5(disk.encode()).hexdigest())
    try:
        lab.exec("hv1", "sanlock", "direct", "init", "-r", "{}:{}:{}:0".format(VM_LOCKSPACE, key, vm_lease))
        xml = guest_xml(guest_name, disk=disk, lease=(VM_LOCKSPACE, key, vm_lease))
        args = {"name": guest_name, "state": "running", "xml": xml, "lock": {"required": True}}
        r = lab.module("hv1", "lockstep.virt.domain", args)
        assert r.get("failed") is not True, r.get("msg")
        cps = {c["name"]: c for c in r["lock_checkpoints"]}
        assert cps["leases_verified"]["ok"] is True and "sanlock" in cps["leases_verified"]["check"]
        assert cps["leases_verified"]["detail"] == "held by this host's sanlock"
        assert sorted((x["kind"], x["resource"], x["holder_host"], x["held_here"]) for x in r["leases"]) == [
            ("disk", disk_lease, "hv1", True),
            ("lease", vm_lease, "hv1", True),
        ]
        assert set(held_here(lab, "hv1")) == {(DISK_LOCKSPACE, os.path.basename(disk_lease)), (VM_LOCKSPACE, key)}

        # the same guest on hv2, without its disk (QEMU's own image lock would refuse first): sanlock refuses
        bare = guest_xml(guest_name, lease=(VM_LOCKSPACE, key, vm_lease))
        args2 = {"name": guest_name, "state": "running", "xml": bare, "lock": {"required": True, "acquire_timeout": 2}}
        r2 = lab.module_fails("hv2", "lockstep.virt.domain", args2)
        assert "held by hv1 (sanlock host_id 1)" in r2["msg"], r2["msg"]
        assert lab.domain_state("hv2", guest_name) == "shut off"
        assert held_here(lab, "hv2") == {}
        assert lab.domain_state("hv1", guest_name) == "running"
    finally:
        lab.cleanup_domain(guest_name)
        for path in (disk, disk_lease, vm_lease):
            if os.path.exists(path):
                os.unlink(path)
