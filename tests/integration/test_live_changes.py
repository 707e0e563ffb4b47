"""Live changes of a running guest through lockstep.virt.domain on the lab: hot-plugged disks (leased by
virtlockd as they arrive), online block resize, and what a BIOS-only guest cannot do (release a device)."""

import hashlib
import os

import pytest
from labkit import lock_holder

MODULE = "lockstep.virt.domain"


def disk_lease(lab, path):
    return os.path.join(lab.lockspace_dir, hashlib.sha256(path.encode()).hexdigest())


def spec(disks, memory=32, vcpus=1):
    return {
        "type": "qemu",
        "memory": memory,
        "vcpus": vcpus,
        "boot": ["hd"],
        "disks": [dict({"path": p, "format": "qcow2"}, **kw) for p, kw in disks],
    }


@pytest.fixture
def guest(lab, guest_name):
    vda = lab.new_disk(guest_name + "-a")
    vdb = lab.new_disk(guest_name + "-b", size="16M")
    r = lab.module(lab.hosts[0], MODULE, {"name": guest_name, "state": "running", "spec": spec([(vda, {})])})
    assert r["domain"]["state"] == "running", r
    yield {"name": guest_name, "vda": vda, "vdb": vdb}
    for path in (vda, vdb):
        if os.path.exists(path):
            os.unlink(path)


def live_targets(lab, host, name):
    out = lab.virsh(host, "domblklist", name).stdout.split()
    return out[0::2]


def test_hotplug_resize_and_unplug(lab, guest):
    hv1 = lab.hosts[0]
    pid = lab.virtlockd_pid(hv1)
    args = {"name": guest["name"], "state": "running", "spec": spec([(guest["vda"], {}), (guest["vdb"], {})])}
    r = lab.module(hv1, MODULE, args, check=True, diff=True)
    assert r["live_changes"] == ["hotplug disk vdb"] and not r["pending_restart"], r
    assert "live: hotplug disk vdb" in r["diff"]["after"]
    assert live_targets(lab, hv1, guest["name"]) == ["vda"]
    r = lab.module(hv1, MODULE, args, diff=True)
    assert r["actions"] == ["redefine", "hotplug"] and not r["pending_restart"], r
    assert live_targets(lab, hv1, guest["name"]) == ["vda", "vdb"]
    # virtlockd leases the hot-plugged disk as it arrives; the module verified it
    verified = [c for c in r["lock_checkpoints"] if c["name"] == "leases_verified"]
    assert verified and verified[-1]["ok"], r["lock_checkpoints"]
    assert lock_holder(disk_lease(lab, guest["vdb"])) == pid
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = lab.module(hv1, MODULE, args, check=check, diff=diff)
        assert not r["changed"] and not r["pending_restart"], (check, diff, r)

    # grown online: the guest sees the new size without a restart
    args["spec"] = spec([(guest["vda"], {}), (guest["vdb"], {"size": "32M"})])
    r = lab.module(hv1, MODULE, args, check=True, diff=True)
    assert (
        r["live_changes"] == ["resize vdb 16 MiB -> 32 MiB"]
        and "live: resize vdb 16 MiB -> 32 MiB" in r["diff"]["after"]
    )
    r = lab.module(hv1, MODULE, args)
    assert r["actions"] == ["resize"] and not r["pending_restart"], r
    info = lab.virsh(hv1, "domblkinfo", guest["name"], "vdb").stdout
    assert "Capacity:       33554432" in info, info
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = lab.module(hv1, MODULE, args, check=check, diff=diff)
        assert not r["changed"], (check, diff, r)

    # removed from the spec: unplug requested; a guest without an OS never releases the device, so it
    # still runs and is reported as a pending difference
    args["spec"] = spec([(guest["vda"], {})])
    r = lab.module(hv1, MODULE, args)
    assert "unplug" in r["actions"] and r["live_changes"] == ["unplug disk vdb"], r
    if "vdb" in live_targets(lab, hv1, guest["name"]):
        assert r["pending_restart"] and any("has not released" in w for w in r.get("warnings", [])), r
    else:
        assert not r["pending_restart"], r


def test_sata_disk_waits_for_the_next_boot(lab, guest):
    hv1 = lab.hosts[0]
    args = {
        "name": guest["name"],
        "state": "running",
        "spec": spec([(guest["vda"], {}), (guest["vdb"], {"bus": "sata"})]),
    }
    r = lab.module(hv1, MODULE, args)
    assert r["pending_restart"] and "live_changes" not in r and r["pending_differences"], r
    assert live_targets(lab, hv1, guest["name"]) == ["vda"]


@pytest.fixture
def network(lab):
    name = "it-" + os.urandom(4).hex()
    xml = "<network><name>{}</name><bridge name='itb{}'/></network>".format(name, name[3:])
    r = lab.module(lab.hosts[0], "lockstep.virt.network", {"name": name, "state": "active", "xml": xml})
    assert r["changed"], r
    yield name
    lab.virsh(lab.hosts[0], "net-destroy", name, check=False)
    lab.virsh(lab.hosts[0], "net-undefine", name, check=False)


def test_interface_hotplug(lab, guest, network):
    hv1 = lab.hosts[0]
    mac = "52:54:00:7e:00:01"
    args = {"name": guest["name"], "state": "running", "spec": spec([(guest["vda"], {})])}
    args["spec"]["interfaces"] = [{"network": network, "mac": mac}]
    r = lab.module(hv1, MODULE, args, check=True, diff=True)
    assert r["live_changes"] == ["hotplug interface " + mac] and "live: hotplug interface" in r["diff"]["after"], r
    r = lab.module(hv1, MODULE, args)
    assert r["actions"] == ["redefine", "hotplug"] and not r["pending_restart"], r
    assert mac in lab.virsh(hv1, "domiflist", guest["name"]).stdout
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = lab.module(hv1, MODULE, args, check=check, diff=diff)
        assert not r["changed"] and not r["pending_restart"], (check, diff, r)


def test_balloon_target_set_once_on_a_guest_without_a_balloon_driver(lab, guest):
    """The BIOS-only guest never gives memory back: the target is set once, then the module says so."""
    hv1 = lab.hosts[0]
    args = {"name": guest["name"], "state": "running", "spec": dict(spec([(guest["vda"], {})]), current_memory=24)}
    r = lab.module(hv1, MODULE, args)
    assert r["live_changes"] == ["memory 32 MiB -> 24 MiB"] and not r["pending_restart"], r
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = lab.module(hv1, MODULE, args, check=check, diff=diff)
        assert not r["changed"] and not r["pending_restart"], (check, diff, r)
        assert any("balloon driver" in w for w in r["warnings"]), r
    r = lab.module(hv1, MODULE, dict(args, spec=spec([(guest["vda"], {})])))
    assert r["live_changes"] == ["memory 24 MiB -> 32 MiB"] and not r["pending_restart"], r
