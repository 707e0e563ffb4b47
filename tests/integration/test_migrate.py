"""lockstep.virt.migrate on the lab: real QEMU, libvirtd and virtlockd on two namespaced hosts.

Guests: 32 MiB, a qcow2 disk on the shared directory (disk lease) and a VM <lease>. The shared directory is a
local filesystem, so every migration passes ``unsafe: true`` (the lab-only escape).

Lease conflicts are injected with a process inside the destination's namespaces that takes the guest's VM
lease file with the same POSIX lock virtlockd uses (byte 0) the instant it is free: it stands for a stale
guest or a half-received one that the destination has not cleaned up yet. Unlike a second guest it wins the
race deterministically, within a few milliseconds of the source releasing.
"""

import os
import shutil
import subprocess
import threading
import time

import pytest
from labkit import LAB, define_and_start, lab_state, lock_holder, tiny_domain_xml
from migrate_helpers import (
    MODULE,
    Guest,
    Sampler,
    assert_checkpoints_sound,
    assert_handoff_order,
    assert_runs_only_on,
    blocked_migration_ports,
    failed,
    lease_grabber,
    migrate,
    names,
)


@pytest.fixture
def guest(lab, guest_name):
    g = Guest(lab, guest_name, "hv1")
    yield g
    g.remove()


# --------------------------------------------------------------------------- success
def test_round_trip_with_verified_handoff(lab, guest):
    vl1, vl2 = lab.virtlockd_pid("hv1"), lab.virtlockd_pid("hv2")
    assert guest.holders() == [vl1, vl1]

    started = time.monotonic()
    with Sampler(guest.leases) as sampler:
        res = migrate(lab, "hv1", "hv2", guest.name)
    wall = time.monotonic() - started
    assert not failed(res), res.get("msg")
    assert res["changed"] is True
    assert res["source"] == "hv1" and res["dest"] == "hv2" and res["state"] == "running"
    assert_handoff_order(res)
    assert all(c["ok"] for c in res["lock_checkpoints"])
    cps = {c["name"]: c for c in res["lock_checkpoints"]}
    # event-sourced, checked, and resumed while libvirt was still confirming the source
    assert cps["perform/source_released"]["source"] == "event" and cps["perform/source_released"]["verified"]
    assert cps["perform/send"]["source"] == "event" and cps["finish/resumed"]["source"] == "event"
    assert cps["finish/dest_acquired"]["source"] == "probe" and cps["finish/dest_acquired"]["verified"]
    assert cps["finish/resumed"]["at"] <= cps["confirm/source_stopped"]["at"], res["lock_checkpoints"]
    assert res["timing_source"] == "events"
    assert_checkpoints_sound(lab, res, "hv1", "hv2")
    cps = {c["name"]: c for c in res["lock_checkpoints"]}
    assert [x["holder_pid"] for x in cps["begin/inquire"]["leases"]] == [vl1, vl1]
    assert [x["held"] for x in cps["prepare/register"]["leases"]] == [True, True]  # still the source's
    assert [x["held"] for x in cps["perform/source_released"]["leases"]] == [False, False]
    assert [x["holder_pid"] for x in cps["finish/dest_acquired"]["leases"]] == [vl2, vl2]
    assert sampler.max_holders() <= 1
    assert res["lease_gap_ms"] is not None and res["downtime_ms"] is not None
    assert res["job"]["elapsed_ms"] > 0
    assert_runs_only_on(lab, guest, "hv2", "hv1")
    print(
        "hv1->hv2 wall {:.2f}s lease_gap_ms {} downtime_ms {} ({}) libvirt downtime {} ms".format(
            wall, res["lease_gap_ms"], res["downtime_ms"], res["timing_source"], res["job"]["downtime_ms"]
        )
    )

    again = migrate(lab, "hv1", "hv2", guest.name)
    assert not failed(again), again.get("msg")
    assert again["changed"] is False and again["state"] == "running"
    assert_runs_only_on(lab, guest, "hv2", "hv1")

    with Sampler(guest.leases) as sampler:
        back = migrate(lab, "hv2", "hv1", guest.name)
    assert not failed(back), back.get("msg")
    assert back["changed"] is True
    assert_handoff_order(back)
    assert_checkpoints_sound(lab, back, "hv2", "hv1")
    assert sampler.max_holders() <= 1
    assert_runs_only_on(lab, guest, "hv1", "hv2")
    assert migrate(lab, "hv2", "hv1", guest.name)["changed"] is False


def test_check_mode_reports_plan_and_touches_nothing(lab, guest):
    res = migrate(lab, "hv1", "hv2", guest.name, check=True, bandwidth=100, auto_converge=True)
    assert not failed(res), res.get("msg")
    assert res["changed"] is True
    assert {"LIVE", "PEER2PEER", "PAUSED", "UNSAFE", "AUTO_CONVERGE"} <= set(res["plan"]["flags"])
    assert res["plan"]["params"] == {"bandwidth": 100}
    assert all(c["ok"] for c in res["checks"])
    assert res["lock_checkpoints"] == []
    assert_runs_only_on(lab, guest, "hv1", "hv2")


def test_check_mode_names_a_missing_network_on_the_destination(lab, guest_name):
    net = "n" + guest_name[-8:]
    xml = "<network><name>{}</name><bridge name='lsv{}' stp='off'/></network>".format(net, guest_name[-8:])
    path = os.path.join(lab.shared_dir, net + ".xml")
    with open(path, "w") as fh:
        fh.write(xml)
    lab.virsh("hv1", "net-create", path)
    os.unlink(path)
    try:
        disk = lab.new_disk(guest_name)
        dom = tiny_domain_xml(guest_name, disk=disk).replace(
            "<graphics", "<interface type='network'><source network='{}'/></interface><graphics".format(net)
        )
        assert define_and_start(lab, "hv1", dom).returncode == 0
        res = migrate(lab, "hv1", "hv2", guest_name, check=True)
        assert failed(res)
        assert "dest_network" in res["msg"] and net in res["msg"], res["msg"]
        assert [c for c in res["checks"] if not c["ok"]][0]["name"] == "dest_network"
        assert lab.domain_state("hv1", guest_name) == "running"
        assert lab.domain_state("hv2", guest_name) is None
        real = migrate(lab, "hv1", "hv2", guest_name)
        assert failed(real) and "dest_network" in real["msg"]
        assert lab.domain_state("hv1", guest_name) == "running"
    finally:
        lab.cleanup_domain(guest_name)
        lab.virsh("hv1", "net-destroy", net, check=False)
        os.unlink(disk)


def test_a_volume_the_destination_pool_does_not_see_is_named_before_anything_moves(lab, guest_name):
    pool, pool_dir = "p" + guest_name[-8:], os.path.join(lab.shared_dir, "pools", guest_name)
    pool_spec = {"type": "dir", "path": pool_dir}
    for host in ("hv1", "hv2"):
        assert not failed(lab.module(host, "lockstep.virt.pool", {"name": pool, "state": "active", "spec": pool_spec}))
    # made after hv2's pool was scanned: hv2 does not list it until its pool is refreshed
    vol = {"pool": pool, "name": guest_name + ".qcow2", "capacity": "16M", "format": "qcow2"}
    assert not failed(lab.module("hv1", "lockstep.virt.volume", vol))
    try:
        spec = {"type": "qemu", "memory": 32, "boot": ["hd"], "disks": [{"pool": pool, "volume": vol["name"]}]}
        started = lab.module("hv1", "lockstep.virt.domain", {"name": guest_name, "state": "running", "spec": spec})
        assert not failed(started), started.get("msg")
        for check in (True, False):
            res = migrate(lab, "hv1", "hv2", guest_name, check=check)
            assert failed(res)
            [bad] = [c for c in res["checks"] if not c["ok"]]
            assert bad["name"] == "dest_volume" and vol["name"] in bad["detail"], res["checks"]
            assert lab.domain_state("hv1", guest_name) == "running"
            assert lab.domain_state("hv2", guest_name) is None
        refresh = lab.module("hv2", "lockstep.virt.pool", {"name": pool, "state": "active", "refresh": True})
        assert not failed(refresh)
        moved = migrate(lab, "hv1", "hv2", guest_name)
        assert not failed(moved), moved.get("msg")
        assert [c["name"] for c in moved["checks"] if c["name"] == "dest_volume" and c["ok"]] == ["dest_volume"]
        assert lab.domain_state("hv2", guest_name) == "running"
    finally:
        lab.cleanup_domain(guest_name)
        lab.module("hv1", "lockstep.virt.volume", dict(vol, state="absent"))
        for host in ("hv1", "hv2"):
            lab.module(host, "lockstep.virt.pool", {"name": pool, "state": "deleted"})
            # hv2's delete finds the directory gone (hv1 removed it) and leaves its definition: undefined here
            lab.virsh(host, "pool-destroy", pool, check=False)
            lab.virsh(host, "pool-undefine", pool, check=False)
        shutil.rmtree(pool_dir, ignore_errors=True)


# --------------------------------------------------------------------------- send failure
def test_send_failure_keeps_the_guest_on_the_source_with_its_leases(lab, guest):
    with blocked_migration_ports(lab, "hv2"):
        res = migrate(lab, "hv1", "hv2", guest.name)
    assert failed(res)
    assert res["msg"].startswith("perform: sending"), res["msg"]
    assert "keeps running on hv1 holding its leases (verified)" in res["msg"]
    assert "hv2 has no copy of it and holds no lease (verified)" in res["msg"]
    assert res["changed"] is False
    seq = names(res)
    assert seq[0] == "begin/inquire" and seq[-3:] == ["perform/send", "finish/dest_clean", "confirm/source_kept"]
    cps = {c["name"]: c for c in res["lock_checkpoints"]}
    assert cps["perform/send"]["ok"] is False
    assert cps["finish/dest_clean"]["ok"] and cps["confirm/source_kept"]["ok"]
    assert_checkpoints_sound(lab, res, "hv1", "hv2")
    assert_runs_only_on(lab, guest, "hv1", "hv2")
    assert "libvirt_error" in res


def test_timeout_aborts_and_the_guest_keeps_running(lab, guest):
    with blocked_migration_ports(lab, "hv2", target="DROP", stall=True):
        started = time.monotonic()
        res = migrate(lab, "hv1", "hv2", guest.name, timeout=4)
        took = time.monotonic() - started
    assert failed(res)
    assert "aborted after the 4s timeout" in res["msg"], res["msg"]
    assert took < 40
    assert_runs_only_on(lab, guest, "hv1", "hv2")
    # when QEMU had already stopped the vCPUs for the final copy, it resumes them itself on the
    # cancel and libvirt takes no lease back: the module pauses and resumes it to retake them
    steps = names(res)
    if "confirm/source_resumed_unleased" in steps:
        assert steps.index("confirm/source_resumed_unleased") < steps.index("confirm/source_reacquired")
        assert "taken back" in res["msg"]


def test_destination_libvirtd_killed_during_the_transfer(lab, guest):
    """hv2's libvirtd dies while the guest is on its way (the transfer held up, so that it is mid-way)."""
    outcome = {}

    def run():
        outcome["res"] = migrate(lab, "hv1", "hv2", guest.name, timeout=90)

    with blocked_migration_ports(lab, "hv2", target="DROP", stall=True):
        mover = threading.Thread(target=run)
        mover.start()
        deadline = time.monotonic() + 60
        while lab.domain_state("hv2", guest.name) != "paused":  # the incoming copy exists: mid-transfer
            assert time.monotonic() < deadline and mover.is_alive(), "the transfer never reached hv2"
            time.sleep(0.2)
        os.kill(lab.state["hosts"]["hv2"]["pids"]["libvirtd"], 9)
        mover.join(120)
    subprocess.run([LAB, "restart", "hv2", "libvirtd"], check=True, capture_output=True, timeout=120)
    lab.state = lab_state()  # the restarted daemon's pid
    res = outcome["res"]
    assert failed(res)
    assert res["msg"].startswith("perform: sending"), res["msg"]
    assert "keeps running on hv1 holding its leases (verified" in res["msg"], res["msg"]
    assert "hv2's libvirtd cannot be reached" in res["msg"] and "it holds no lease (verified)" in res["msg"]
    assert res["changed"] is False
    assert names(res)[-2:] == ["finish/dest_clean", "confirm/source_kept"]
    # the restarted libvirtd finds its half-received guest and removes it: nothing left on hv2
    deadline = time.monotonic() + 30
    while lab.domain_state("hv2", guest.name) not in (None, "shut off"):
        assert time.monotonic() < deadline, lab.domain_state("hv2", guest.name)
        time.sleep(0.5)
    assert_runs_only_on(lab, guest, "hv1", "hv2")


# --------------------------------------------------------------------------- destination lease conflict
def test_destination_lease_conflict_is_retried_until_it_clears(lab, guest):
    with lease_grabber(lab, "hv2", guest.vm_lease, hold=4) as grab:
        res = migrate(lab, "hv1", "hv2", guest.name, lock={"acquire_timeout": 30})
        assert os.path.exists(grab["marker"]), "the stale holder never got the lease"
    assert not failed(res), res.get("msg")
    seq = names(res)
    assert "finish/acquire_busy" in seq
    assert_handoff_order(res, extra=("finish/acquire_busy",))
    busy = [c for c in res["lock_checkpoints"] if c["name"] == "finish/acquire_busy"]
    assert all(not c["ok"] and "resource busy" in c["detail"] for c in busy)
    assert_runs_only_on(lab, guest, "hv2", "hv1")


def test_destination_lease_conflict_that_stays_fails_cleanly(lab, guest):
    with lease_grabber(lab, "hv2", guest.vm_lease, hold=60) as grab:
        res = migrate(lab, "hv1", "hv2", guest.name, lock={"acquire_timeout": 3})
        grabbed = os.path.exists(grab["marker"])
        assert failed(res)
        assert grabbed
        assert res["msg"].startswith("finish: hv2 could not take the leases"), res["msg"]
        assert guest.key in res["msg"] and "runs nowhere" in res["msg"]
        assert lab.domain_state("hv2", guest.name) == "paused"
        assert lab.domain_state("hv1", guest.name) is None
        assert lock_holder(guest.vm_lease) not in (lab.virtlockd_pid("hv1"), lab.virtlockd_pid("hv2"))
    assert res["changed"] is True and res["state"] == "paused"
    cps = {c["name"]: c for c in res["lock_checkpoints"]}
    assert cps["finish/dest_acquired"]["ok"] is False and cps["confirm/source_stopped"]["ok"] is True
    info = lab.module("hv2", "lockstep.virt.domain_info", {"name": guest.name})
    assert "did not finish" in info["domains"][0]["handoff"]["note"], info
    # once the stale holder is gone, the same task run again finishes the handoff where the guest is
    again = migrate(lab, "hv1", "hv2", guest.name)
    assert not failed(again), again.get("msg")
    assert again["changed"] is True and again["state"] == "running"
    assert names(again)[0] == "reconcile/found" and "reconcile/dest_resumed" in names(again)
    assert_runs_only_on(lab, guest, "hv2", "hv1")
    assert migrate(lab, "hv1", "hv2", guest.name)["changed"] is False


# --------------------------------------------------------------------------- the seed regression
def test_release_before_send_with_a_failed_send_cannot_reacquire(lab, guest):
    """The old ordering: the source releases first; the send fails while the destination still holds the
    lease of the half-received guest, so the source cannot take it back: the guest runs nowhere."""
    with blocked_migration_ports(lab, "hv2"), lease_grabber(lab, "hv2", guest.vm_lease, hold=60) as grab:
        res = migrate(lab, "hv1", "hv2", guest.name, lock={"release": "before_send", "acquire_timeout": 2})
        assert os.path.exists(grab["marker"])
        assert failed(res)
        assert "could not take its leases back" in res["msg"], res["msg"]
        assert any("before_send" in w for w in res.get("warnings", []))
        seq = names(res)
        assert seq[:3] == ["begin/inquire", "perform/source_paused", "perform/source_released"]
        assert "confirm/source_reacquire_busy" in seq and "confirm/source_reacquired" not in seq
        assert lab.domain_state("hv1", guest.name) == "paused"
        assert lab.domain_state("hv2", guest.name) is None
    lab.virsh("hv1", "resume", guest.name)
    assert_runs_only_on(lab, guest, "hv1", "hv2")


def test_release_after_send_with_the_same_fault_keeps_the_guest_running(lab, guest):
    with blocked_migration_ports(lab, "hv2"), lease_grabber(lab, "hv2", guest.vm_lease, hold=60) as grab:
        res = migrate(lab, "hv1", "hv2", guest.name, lock={"acquire_timeout": 2})
        assert not os.path.exists(grab["marker"]), "the source never released: nothing to grab"
        assert failed(res) and res["msg"].startswith("perform: sending")
        assert "keeps running on hv1 holding its leases" in res["msg"]
        assert not any(n.startswith("confirm/source_reacquire") for n in names(res))
        assert_runs_only_on(lab, guest, "hv1", "hv2")


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "args, message",
    [
        ({"dest_uri": "qemu+ssh://nohost.invalid/system"}, "cannot reach the destination"),
        ({"name": "no-such-guest-here"}, "not found on hv1"),
        ({"mode": "direct", "extra_flags": ["TUNNELLED"]}, "tunnelled migration needs peer-to-peer"),
        ({"postcopy": 5, "live": False}, "postcopy needs a live migration"),
        ({"dest_uri": "qemu+ssh://hv1/system"}, "is the source host hv1 (same host UUID"),
    ],
)
def test_bad_input_changes_nothing(lab, guest, args, message):
    merged = {"name": guest.name, "dest_uri": "qemu+ssh://hv2/system", "unsafe": True}
    merged.update(args)
    res = lab.module("hv1", MODULE, merged)
    assert failed(res)
    assert message in res["msg"], res["msg"]
    assert res.get("changed") is False
    assert_runs_only_on(lab, guest, "hv1", "hv2")
