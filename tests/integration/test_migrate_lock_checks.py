"""lockstep.virt.migrate and lease_info on the lab: shareable disks and the destination's lock configuration.

Shareable disks: two guests on hv1 share a raw ``<shareable/>`` disk on the shared directory, as clustered
filesystems and quorum disks do. virtlockd locks it shared (F_RDLCK), one lock per host for every guest there
sharing it, so after one guest leaves, hv1's virtlockd keeps the lock for the other. The migrating guest must
still be handed off (verified) and the other guest must keep running on hv1.

The destination's lock configuration: hv3 is the lab's host without a lock manager (``--unlocked 1``); a guest
sent there would run unleased, so preflight refuses it and nothing changes, in check mode too.
"""

import hashlib
import os
import subprocess

import pytest
from labkit import define_and_start, lock_holder
from migrate_helpers import Guest, failed, lease_xml, migrate, names

LEASE_INFO = "lockstep.virt.lease_info"


def shared_disk_xml(path):
    return (
        "<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>"
        "<source file='{}'/><target dev='vdb' bus='virtio'/><shareable/></disk>".format(path)
    )


def guest_xml(name, shared, own_disk=None, lease=None, lockspace_dir=None):
    """A 32 MiB BIOS-only guest with the shared disk, and optionally its own qcow2 disk and a VM lease."""
    devices = shared_disk_xml(shared)
    if own_disk:
        devices = (
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
            "<source file='{}'/><target dev='vda' bus='virtio'/></disk>".format(own_disk)
        ) + devices
    if lease:
        devices = lease_xml(lease, lockspace_dir) + devices
    return (
        "<domain type='qemu'><name>{}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>"
        "<on_poweroff>destroy</on_poweroff><devices>{}<graphics type='vnc' listen='127.0.0.1'/></devices>"
        "</domain>".format(name, devices)
    )


def read_lock_type(lab, path):
    """The type of the lock F_GETLK reports on byte 0 of ``path`` (``shared``/``exclusive``) or None."""
    code = (
        "import fcntl,os,struct,sys\n"
        "fd=os.open(sys.argv[1],os.O_RDONLY)\n"
        "t=struct.unpack('hhqqi',fcntl.fcntl(fd,fcntl.F_GETLK,struct.pack('hhqqi',fcntl.F_WRLCK,0,0,1,0)))[0]\n"
        "print({fcntl.F_RDLCK:'shared',fcntl.F_WRLCK:'exclusive'}.get(t,'none'))\n"
    )
    out = subprocess.run(["python3", "-c", code, path], capture_output=True, text=True, check=True).stdout.strip()
    return None if out == "none" else out


@pytest.fixture
def shared_pair(lab, guest_name, request):
    """shr-a (the one to migrate) and shr-b on hv1 sharing a raw shareable disk; with ``own`` shr-a also has
    its own qcow2 disk and a VM lease (exclusive leases beside the shared one)."""
    own = request.param
    shared = os.path.join(lab.images_dir, guest_name + "-shared.raw")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", shared, "16M"], check=True)
    a, b = guest_name + "-a", guest_name + "-b"
    made = [shared]
    own_disk = key = None
    if own:
        own_disk = lab.new_disk(a)
        key = a + "-lease"
        made += [own_disk, lab.lease_file(key)]
    try:
        for _name, xml in (
            (b, guest_xml(b, shared)),
            (a, guest_xml(a, shared, own_disk=own_disk, lease=key, lockspace_dir=lab.lockspace_dir)),
        ):
            res = define_and_start(lab, "hv1", xml)
            assert res.returncode == 0, res.stderr
        yield {"a": a, "b": b, "shared": shared, "own": own, "lease": lab.lockspace_dir + "/" + str(key)}
    finally:
        for name in (a, b):
            lab.cleanup_domain(name)
        for path in made:
            if os.path.exists(path):
                os.unlink(path)


@pytest.mark.parametrize("shared_pair", [False, True], ids=["only-shared-disk", "with-own-leases"], indirect=True)
def test_a_guest_sharing_a_disk_with_one_left_on_the_source_is_handed_off(lab, shared_pair):
    a, b, shared = shared_pair["a"], shared_pair["b"], shared_pair["shared"]
    shared_lease = os.path.join(lab.lockspace_dir, hashlib.sha256(shared.encode()).hexdigest())
    vl1, vl2 = lab.virtlockd_pid("hv1"), lab.virtlockd_pid("hv2")
    assert read_lock_type(lab, shared_lease) == "shared" and lock_holder(shared_lease) == vl1

    res = migrate(lab, "hv1", "hv2", a)
    assert not failed(res), res.get("msg")
    assert res["changed"] is True and res["state"] == "running"
    assert all(c["ok"] for c in res["lock_checkpoints"]), res["lock_checkpoints"]
    cps = {c["name"]: c for c in res["lock_checkpoints"]}
    assert "finish/resumed" in cps and cps["finish/dest_acquired"]["verified"]

    def shared_entry(cp):
        (entry,) = [x for x in cp["leases"] if x["resource"] == shared_lease]
        return entry

    # before the send: hv1's lock for both guests, which cannot show shr-a's own share
    begin = shared_entry(cps["begin/inquire"])
    assert begin["lock"] == "shared" and begin["holder"] == "source_shared" and begin["sharers"] == [b], begin
    released = cps["perform/source_released"]
    assert released["verified"] and released["ok"]
    assert "shareable disk vdb" in released["check"] and "SUSPENDED event" in released["check"], released["check"]
    assert shared_entry(released)["holder"] == "source_shared"  # hv1 keeps it for shr-b: no exclusive holder
    if shared_pair["own"]:
        # shr-a's exclusive leases: released by hv1, then held by hv2's virtlockd
        own = [x for x in released["leases"] if x["resource"] != shared_lease]
        assert len(own) == 2 and not any(x["held"] for x in own), own
        taken = [x for x in cps["finish/dest_acquired"]["leases"] if x["resource"] != shared_lease]
        assert [x["holder_pid"] for x in taken] == [vl2, vl2]
    acquired = shared_entry(cps["finish/dest_acquired"])
    assert acquired["lock"] == "shared" and acquired["holder"] in ("source_shared", "other"), acquired
    # the event-stamped checkpoints carry their probe's own time, taken after the event
    for name in ("prepare/register", "perform/source_released"):
        if cps[name]["source"] == "event":
            assert cps[name]["probed_at"] >= cps[name]["at"], cps[name]

    assert lab.domain_state("hv2", a) == "running" and lab.domain_state("hv1", a) in (None, "shut off")
    assert lab.domain_state("hv1", b) == "running"
    assert read_lock_type(lab, shared_lease) == "shared"

    # lease_info on each host: its virtlockd holds a shared lock on the disk for its guest
    on_hv1 = lab.module("hv1", LEASE_INFO, {"names": [b]})
    (gb,) = on_hv1["guests"]
    (lb,) = [x for x in gb["leases"] if x["resource"] == shared_lease]
    assert lb["lock"] == "shared" and lb["held"] is True and lb["held_here"] is True and lb["sharers"] == []
    assert on_hv1["unleased_running"] == [], on_hv1["unleased_running"]
    on_hv2 = lab.module("hv2", LEASE_INFO, {"names": [a]})
    (ga,) = on_hv2["guests"]
    (la,) = [x for x in ga["leases"] if x["resource"] == shared_lease]
    # F_GETLK names one of the two hosts' shared locks; hv2's own is seen in its virtlockd's files either way
    assert la["lock"] == "shared" and la["held_here"] is True and la["holder_pid"] in (vl1, vl2), la
    assert on_hv2["unleased_running"] == [], on_hv2["unleased_running"]


def test_lease_info_reports_shared_locks_and_their_sharers(lab, guest_name):
    shared = os.path.join(lab.images_dir, guest_name + "-shared.raw")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", shared, "16M"], check=True)
    shared_lease = os.path.join(lab.lockspace_dir, hashlib.sha256(shared.encode()).hexdigest())
    a, b = guest_name + "-a", guest_name + "-b"
    try:
        for name in (a, b):
            assert define_and_start(lab, "hv1", guest_xml(name, shared)).returncode == 0
        info = lab.module("hv1", LEASE_INFO, {"names": [a, b]})
        by_name = {g["name"]: g for g in info["guests"]}
        for me, other in ((a, b), (b, a)):
            (x,) = by_name[me]["leases"]
            assert x["resource"] == shared_lease and x["disk"] == "vdb"
            assert x["lock"] == "shared" and x["held_here"] is True
            assert x["holder_pid"] == lab.virtlockd_pid("hv1") and x["sharers"] == [other]
        assert info["unleased_running"] == []
        # one guest stops: the lock stays for the other, and now it can only be that guest's own share
        lab.virsh("hv1", "destroy", a)
        info = lab.module("hv1", LEASE_INFO, {"names": [b]})
        (x,) = info["guests"][0]["leases"]
        assert x["held_here"] is True and x["lock"] == "shared" and x["sharers"] == []
        lab.virsh("hv1", "destroy", b)
        info = lab.module("hv1", LEASE_INFO, {"names": [b]})
        (x,) = info["guests"][0]["leases"]
        assert x["held"] is False and x["lock"] is None
    finally:
        for name in (a, b):
            lab.cleanup_domain(name)
        if os.path.exists(shared):
            os.unlink(shared)


@pytest.mark.parametrize("check", [False, True], ids=["run", "check-mode"])
def test_a_destination_without_lock_manager_is_refused_before_anything_moves(lab, guest_name, check):
    assert lab.unlocked_hosts, "the lab needs a host without lock manager: tests/lab/lab up --unlocked 1"
    dest = lab.unlocked_hosts[0]
    guest = Guest(lab, guest_name, "hv1")
    try:
        vl1 = lab.virtlockd_pid("hv1")
        assert guest.holders() == [vl1, vl1]
        res = migrate(lab, "hv1", dest, guest.name, check=check)
        assert failed(res), res
        assert res["changed"] is False
        assert res["msg"].startswith(("check mode: begin: " if check else "begin: ") + "migration of"), res["msg"]
        assert "{} has no lock manager".format(dest) in res["msg"], res["msg"]
        assert "would run there unleased" in res["msg"]
        (bad,) = [c for c in res["checks"] if not c["ok"]]
        assert bad["name"] == "dest_lock_manager"
        assert names(res) == []  # nothing was begun
        assert lab.domain_state("hv1", guest.name) == "running"
        assert lab.domain_state(dest, guest.name) is None
        assert guest.holders() == [vl1, vl1]
    finally:
        guest.remove()


def test_a_destination_with_the_same_lockspace_passes_the_check(lab, guest_name):
    guest = Guest(lab, guest_name, "hv1")
    try:
        res = migrate(lab, "hv1", "hv2", guest.name, check=True)
        assert not failed(res), res.get("msg")
        (ok,) = [c for c in res["checks"] if c["name"] == "dest_lock_manager"]
        assert ok["ok"] is True and lab.lockspace_dir in ok["detail"], ok
        assert lab.domain_state("hv1", guest.name) == "running"
    finally:
        guest.remove()


def test_a_destination_configured_for_another_lockspace_is_refused(lab, guest_name):
    """hv2's qemu-lockd.conf names another file_lockspace_dir (its libvirtd is not restarted: the check reads the
    files, as the source's configuration is read): a guest sent there would be leased where no other host looks."""
    conf = "/etc/libvirt/qemu-lockd.conf"
    original = lab.exec("hv2", "cat", conf).stdout
    assert lab.lockspace_dir in original
    other = lab.lockspace_dir + "-elsewhere"
    guest = Guest(lab, guest_name, "hv1")
    try:
        lab.exec("hv2", "sh", "-c", "cat > " + conf, input=original.replace(lab.lockspace_dir, other))
        vl1 = lab.virtlockd_pid("hv1")
        res = migrate(lab, "hv1", "hv2", guest.name)
        assert failed(res) and res["changed"] is False, res
        (bad,) = [c for c in res["checks"] if not c["ok"]]
        assert bad["name"] == "dest_lockspace", bad
        assert "file_lockspace_dir {} there, {} here".format(other, lab.lockspace_dir) in bad["detail"], bad
        assert "lockspace {} is not one hv2's virtlockd knows".format(lab.lockspace_dir) in bad["detail"]
        assert lab.domain_state("hv1", guest.name) == "running" and lab.domain_state("hv2", guest.name) is None
        assert guest.holders() == [vl1, vl1]
    finally:
        lab.exec("hv2", "sh", "-c", "cat > " + conf, input=original)
        guest.remove()
    assert lab.exec("hv2", "cat", conf).stdout == original
