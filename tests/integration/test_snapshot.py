"""lockstep.virt.snapshot and snapshot_info on the lab: real QEMU snapshots of 32 MiB BIOS guests whose
qcow2 image is on the shared storage (a disk lease), with the leases checked both in the result and with
F_GETLK from here against each host's virtlockd."""

import hashlib
import os

import pytest
from labkit import lock_holder

MODULE = "lockstep.virt.snapshot"
INFO = "lockstep.virt.snapshot_info"


def names(result):
    return [c["name"] for c in result.get("lock_checkpoints") or []]


def spec(disk):
    return {"type": "qemu", "memory": 32, "vcpus": 1, "boot": ["hd"], "disks": [{"path": disk, "format": "qcow2"}]}


def disk_lease(lab, path):
    return os.path.join(lab.lockspace_dir, hashlib.sha256(path.encode()).hexdigest())


@pytest.fixture
def guest(lab, guest_name):
    """A tiny guest defined on every host (its image on the shared storage), running on hv1."""
    disk = lab.new_disk(guest_name)
    for host in lab.hosts:
        r = lab.module(host, "lockstep.virt.domain", {"name": guest_name, "state": "present", "spec": spec(disk)})
        assert not r.get("failed"), r
    r = lab.module(lab.hosts[0], "lockstep.virt.domain", {"name": guest_name, "state": "running"})
    assert r["domain"]["state"] == "running", r
    yield {"name": guest_name, "disk": disk, "lease": disk_lease(lab, disk)}
    for host in lab.all_hosts:
        lab.virsh(host, "destroy", guest_name, check=False)
        lab.virsh(host, "undefine", "--snapshots-metadata", "--nvram", guest_name, check=False)
    for f in os.listdir(os.path.dirname(disk)):
        if f.startswith(guest_name):
            os.unlink(os.path.join(os.path.dirname(disk), f))


def snap(lab, guest, host="hv1", **kw):
    args = {"domain": guest["name"]}
    args.update(kw)
    return lab.module(host, MODULE, args)


def test_internal_snapshot_revert_keeps_leases_right(lab, guest):
    hv1, hv2 = lab.hosts[0], lab.hosts[1]
    pid1, pid2 = lab.virtlockd_pid(hv1), lab.virtlockd_pid(hv2)
    args = {"domain": guest["name"], "name": "on", "description": "running"}
    r = lab.module(hv1, MODULE, args, check=True, diff=True)
    assert r["actions"] == ["create"] and lab.virsh(hv1, "snapshot-list", "--name", guest["name"]).stdout.strip() == ""
    r = lab.module(hv1, MODULE, args, diff=True)
    assert r["actions"] == ["create"] and r["snapshot"]["state"] == "running" and r["snapshot"]["memory"] == "internal"
    # QEMU stopped the vCPUs for the snapshot; the leases are verified held again afterwards
    verified = [c for c in r["lock_checkpoints"] if c["name"] == "leases_verified"]
    assert verified and verified[0]["ok"] and lock_holder(guest["lease"]) == pid1, r["lock_checkpoints"]
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = lab.module(hv1, MODULE, args, check=check, diff=diff)
        assert not r["changed"] and r["actions"] == [], (check, diff, r)

    info = lab.module(hv1, INFO, {"domain": guest["name"]}, check=True)
    assert [(s["name"], s["current"], s["managed"]) for s in info["snapshots"]] == [("on", True, True)]
    assert [b["name"] for b in info["migration_blockers"]] == ["on"]

    # shut off here, running on hv2 (the same image): a revert here is refused and changes nothing
    lab.module(hv1, "lockstep.virt.domain", {"name": guest["name"], "state": "destroyed"})
    r = lab.module(hv2, "lockstep.virt.domain", {"name": guest["name"], "state": "running"})
    assert r["domain"]["state"] == "running" and lock_holder(guest["lease"]) == pid2
    for check in (True, False):
        r = lab.module(hv1, MODULE, {"domain": guest["name"], "name": "on", "state": "reverted"}, check=check)
        assert r.get("failed") and "nothing was changed" in r["msg"] and guest["lease"] in r["msg"], r
        assert names(r) == ["revert_refused"] and r["actions"] == []
    assert lab.domain_state(hv1, guest["name"]) == "shut off"
    assert lab.domain_state(hv2, guest["name"]) == "running" and lock_holder(guest["lease"]) == pid2

    # free again: the revert runs the guest here, holding its lease exactly when it runs
    lab.module(hv2, "lockstep.virt.domain", {"name": guest["name"], "state": "destroyed"})
    r = snap(lab, guest, name="on", state="reverted")
    assert r["actions"] == ["revert"], r
    order = names(r)
    assert order[:2] == ["reverted_paused", "resumed"] and order[-1] == "running", order
    assert [c for c in r["lock_checkpoints"] if c["name"] == "leases_verified"][0]["ok"]
    assert r["domain"]["state"] == "running" and lock_holder(guest["lease"]) == pid1
    assert [x["held_here"] for x in r["leases"]] == [True]
    again = snap(lab, guest, name="on", state="reverted")  # an action: it reverts again, leases kept right
    assert again["changed"] and again["actions"] == ["revert"] and lock_holder(guest["lease"]) == pid1

    # a snapshot taken shut off: reverting to it stops the guest and releases its lease
    lab.module(hv1, "lockstep.virt.domain", {"name": guest["name"], "state": "destroyed"})
    assert snap(lab, guest, name="off")["snapshot"]["state"] == "shutoff"
    lab.module(hv1, "lockstep.virt.domain", {"name": guest["name"], "state": "running"})
    r = snap(lab, guest, name="off", state="reverted")
    assert r["actions"] == ["revert"] and r["domain"]["state"] == "shutoff", r
    released = [c for c in r["lock_checkpoints"] if c["name"] == "leases_released"]
    assert released and released[0]["ok"] and lock_holder(guest["lease"]) is None, r["lock_checkpoints"]

    info = lab.module(hv1, INFO, {"domain": guest["name"]}, check=True)
    assert [(s["name"], s["parent"]) for s in info["snapshots"]] == [("on", None), ("off", "on")]
    assert info["current"] == "off"
    for name in ("off", "on"):
        assert snap(lab, guest, name=name, state="absent")["actions"] == ["delete"]
    assert lab.module(hv1, INFO, {"domain": guest["name"]}, check=True)["snapshots"] == []


def test_keep_prunes_only_its_own_oldest(lab, guest):
    hv1 = lab.hosts[0]
    lab.virsh(hv1, "snapshot-create-as", guest["name"], "manual")
    for i in range(3):
        r = snap(lab, guest, name="k{}".format(i), keep=2)
    assert r["actions"] == ["create", "prune"] and r["removed"] == ["k0"], r
    listed = sorted(lab.virsh(hv1, "snapshot-list", "--name", guest["name"]).stdout.split())
    assert listed == ["k1", "k2", "manual"]
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = lab.module(hv1, MODULE, {"domain": guest["name"], "name": "k2", "keep": 2}, check=check, diff=diff)
        assert not r["changed"], (check, diff, r)


def test_disk_only_overlay_beside_the_disk_and_quiesce_needs_the_agent(lab, guest):
    hv1 = lab.hosts[0]
    r = lab.module(hv1, MODULE, {"domain": guest["name"], "name": "ext", "disk_only": True, "quiesce": True})
    assert r.get("failed") and "guest agent" in r["msg"] and "nothing was changed" in r["msg"], r
    assert lab.virsh(hv1, "snapshot-list", "--name", guest["name"]).stdout.strip() == ""
    args = {"domain": guest["name"], "name": "ext", "disk_only": True}
    r = lab.module(hv1, MODULE, args, diff=True)
    assert r["actions"] == ["create"] and r["snapshot"]["external"] and r["snapshot"]["state"] == "disk-snapshot", r
    (disk,) = r["snapshot"]["disks"]
    assert disk["snapshot"] == "external" and os.path.dirname(disk["file"]) == os.path.dirname(guest["disk"])
    assert os.path.exists(disk["file"]) and disk["file"] != guest["disk"]
    assert "<source file='{}'".format(disk["file"]) in lab.virsh(hv1, "dumpxml", guest["name"]).stdout
    # the guest now writes the overlay: that is what virtlockd leases
    assert lock_holder(disk_lease(lab, disk["file"])) == lab.virtlockd_pid(hv1)
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = lab.module(hv1, MODULE, args, check=check, diff=diff)
        assert not r["changed"], (check, diff, r)
    info = lab.module(hv1, INFO, {"domain": guest["name"]}, check=True)
    (blocker,) = info["migration_blockers"]
    assert blocker["name"] == "ext" and blocker["external"]


@pytest.mark.parametrize("disk_only", [False, True])
def test_libvirt_refuses_migration_with_any_snapshot_metadata(lab, guest, disk_only):
    """What migration_blockers documents: internal or external, libvirt refuses while the metadata is here."""
    hv1, hv2 = lab.hosts[0], lab.hosts[1]
    lab.virsh(hv2, "undefine", guest["name"])
    snap(lab, guest, name="s", disk_only=disk_only)
    info = lab.module(hv1, INFO, {"domain": guest["name"]}, check=True)
    assert [(b["name"], b["external"]) for b in info["migration_blockers"]] == [("s", disk_only)]
    # migrate's preflight names the snapshot before anything moves, in check mode too
    args = {"name": guest["name"], "dest_uri": "qemu+ssh://{}/system".format(hv2), "unsafe": True}
    for check in (True, False):
        r = lab.module(hv1, "lockstep.virt.migrate", args, check=check)
        assert r.get("failed") and "no_snapshots: snapshot s: " in r["msg"], r
        assert ("external" if disk_only else "internal") + " snapshot" in r["msg"], r
        assert r["changed"] is False and not r["lock_checkpoints"], r
    assert lab.domain_state(hv1, guest["name"]) == "running"
    # libvirt refuses it too, in its own words: the preflight does not stand in for a rule libvirt lacks
    res = lab.virsh(
        hv1, "migrate", "--live", "--p2p", "--unsafe", guest["name"], "qemu+ssh://{}/system".format(hv2), check=False
    )
    assert res.returncode != 0 and "snapshot" in res.stderr, res.stderr
    assert lab.domain_state(hv1, guest["name"]) == "running"


def test_a_revert_rolls_back_an_upgrade_made_after_the_snapshot(lab, guest_name):
    """The everyday use: snapshot a running guest, change it, revert. The snapshot is still the current one
    and the guest still runs, as it was taken: the revert must roll back all the same."""
    from migrate_helpers import LinuxGuest

    g = LinuxGuest(lab, guest_name, "hv1")
    try:
        taken = lab.module("hv1", MODULE, {"domain": g.name, "name": "pre-upgrade"})
        assert taken["changed"] and taken["snapshot"]["state"] == "running", taken
        # the upgrade: a file written in the running guest (its root is in memory, kept by the snapshot)
        assert g.exec_status(g.spawn(["/bin/sh", "-c", "echo 2 > /upgraded"])) == 0
        assert g.exec_status(g.spawn(["/bin/sh", "-c", "test -e /upgraded"])) == 0
        r = lab.module("hv1", MODULE, {"domain": g.name, "name": "pre-upgrade", "state": "reverted"})
        assert r["changed"] and r["actions"] == ["revert"], r
        assert names(r)[:2] == ["reverted_paused", "resumed"] and r["domain"]["state"] == "running", r
        assert lock_holder(g.vm_lease) == lab.virtlockd_pid("hv1")
        g.wait_agent()
        assert g.exec_status(g.spawn(["/bin/sh", "-c", "test -e /upgraded"])) == 1, "the upgrade survived the revert"
    finally:
        lab.virsh("hv1", "snapshot-delete", g.name, "pre-upgrade", check=False)
        g.remove()
