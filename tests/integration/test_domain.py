"""lockstep.virt.domain on the lab: real QEMU, libvirtd and virtlockd, driven with ansible-playbook over SSH.

Guests are 32 MiB BIOS-only qemu guests (SeaBIOS finds nothing to boot and idles; it ignores ACPI), with a
qcow2 image on the shared directory (a disk lease) and, where the test is about it, a VM ``<lease>``. Leases
are checked twice: in the module's result, and independently with F_GETLK on the lease file from here
(``labkit.lock_holder``) against the pid of the host's virtlockd.
"""

import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest
import yaml
from labkit import COLLECTIONS, LAB, REPO, define_and_start, lock_holder, tiny_domain_xml

MODULE = "lockstep.virt.domain"
HV1 = "hv1"
START_ORDER = ["created_paused", "resumed", "leases_verified", "running"]


# --------------------------------------------------------------------------- helpers
def disk_lease(lab, path):
    """virtlockd's indirect lease file of a disk: file_lockspace_dir/<sha256 of the path>."""
    return os.path.join(lab.lockspace_dir, hashlib.sha256(path.encode()).hexdigest())


def tiny_spec(disk=None, memory=32, lease=None):
    spec = {"type": "qemu", "memory": memory, "vcpus": 1, "boot": ["hd"]}
    if disk:
        spec["disks"] = [{"path": disk, "format": "qcow2"}]
    if lease is not None:
        spec["lease"] = lease
    return spec


def names(result):
    return [c["name"] for c in result.get("lock_checkpoints") or []]


def at(checkpoint):
    return datetime.strptime(checkpoint["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def checkpoint(result, name):
    found = [c for c in result["lock_checkpoints"] if c["name"] == name]
    assert found, (name, names(result))
    return found[0]


def assert_in_order(result, expected):
    """``expected`` checkpoints appear in that order, and every ``at`` is later than or equal to the previous
    one (``at`` has millisecond resolution: two steps may share a millisecond)."""
    got = names(result)
    positions = [got.index(n) for n in expected]
    assert positions == sorted(positions), got
    stamps = [at(c) for c in result["lock_checkpoints"]]
    assert stamps == sorted(stamps), result["lock_checkpoints"]
    for c in result["lock_checkpoints"]:
        assert c["host"] in ("hv1", "hv2", "hv3"), c


def assert_held_on(lab, host, result, expected_resources):
    """The module says each lease is held by ``host``'s virtlockd, and F_GETLK from here agrees."""
    pid = lab.virtlockd_pid(host)
    assert sorted(x["resource"] for x in result["leases"]) == sorted(expected_resources), result["leases"]
    for x in result["leases"]:
        assert x["held"] is True and x["held_here"] is True, x
        assert x["holder_pid"] == pid, x
        assert x["lockspace"] == lab.lockspace_dir, x
    for path in expected_resources:
        assert lock_holder(path) == pid, path


def dominfo(lab, host, name):
    out = lab.virsh(host, "dominfo", name).stdout
    return dict((k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line))


def inactive_memory_kib(lab, host, name):
    xml = lab.virsh(host, "dumpxml", "--inactive", name).stdout
    return int(re.search(r"<memory unit='KiB'>(\d+)</memory>", xml).group(1))


def play(host, *tasks):
    return [{"hosts": host, "gather_facts": False, "tasks": list(tasks)}]


def assert_unchanged_in_every_mode(lab, host, args):
    """A second identical run: changed=false in normal, check and diff mode (and both)."""
    modes = [("normal", {}), ("check", {"check_mode": True}), ("diff", {"diff": True})]
    modes.append(("check+diff", {"check_mode": True, "diff": True}))
    tasks = [dict({"name": mode, MODULE: args}, **kw) for mode, kw in modes]
    run = lab.playbook(play(host, *tasks))
    assert run.rc == 0, run.stdout[-3000:]
    for mode, _kw in modes:
        r = run.task(mode, host)
        assert r["changed"] is False and r["actions"] == [], (mode, r)
        assert r.get("pending_restart") is False, (mode, r)
        if "diff" in mode:
            assert r["diff"]["before"] == r["diff"]["after"], (mode, r["diff"])
        else:  # built only when diff mode asks for it
            assert "diff" not in r, (mode, r)
    return run


class Scratch:
    """Files a test makes on the shared directory (images, lease key files), removed at the end, after its
    guests are gone; disk lease files virtlockd made for them too (once no one holds them)."""

    def __init__(self, lab, name):
        self.lab = lab
        self.name = name
        self.paths = []

    def disk(self, suffix=""):
        path = self.lab.new_disk(self.name + suffix)
        self.paths += [path, disk_lease(self.lab, path)]
        return path

    def add(self, path):
        self.paths.append(path)
        return path

    def remove(self):
        self.lab.cleanup_domain(self.name)
        for path in self.paths:
            if os.path.exists(path) and lock_holder(path) is None:
                os.unlink(path)


@pytest.fixture
def scratch(lab, guest_name):
    s = Scratch(lab, guest_name)
    yield s
    s.remove()


# --------------------------------------------------------------------------- create and idempotency
def test_create_from_spec_check_mode_idempotency_and_leases(lab, guest_name, scratch):
    disk = scratch.disk()
    args = {"name": guest_name, "state": "running", "spec": tiny_spec(disk, lease={})}

    # check mode on first creation: predicts the define and the start, does neither
    r = lab.module(HV1, MODULE, args, check=True, diff=True)
    assert r["changed"] is True and r["actions"] == ["define", "start"], r
    assert r["domain"]["name"] == guest_name and r["domain"]["state"] == "running"
    assert r["diff"]["before"].startswith("state: absent\n")
    assert r["diff"]["after"].startswith("state: running\n") and "32768" in r["diff"]["after"]
    assert r["lock_checkpoints"] == []
    assert lab.domain_state(HV1, guest_name) is None
    assert not os.path.exists(os.path.join(lab.lockspace_dir, r["domain"]["uuid"]))  # no lease file written
    assert lock_holder(disk_lease(lab, disk)) is None

    r = lab.module(HV1, MODULE, args)
    assert r.get("failed") is not True, r.get("msg")
    assert r["changed"] is True and r["actions"] == ["define", "start"], r
    uuid = r["domain"]["uuid"]
    vm_lease = scratch.add(os.path.join(lab.lockspace_dir, uuid))  # lease key: the guest's UUID by default
    assert r["domain"]["state"] == "running" and r["domain"]["persistent"] is True and r["domain"]["id"]
    assert lab.domain_state(HV1, guest_name) == "running"
    assert lab.virsh(HV1, "domuuid", guest_name).stdout.strip() == uuid

    # leases: in the result, and independently from here
    assert_held_on(lab, HV1, r, [disk_lease(lab, disk), vm_lease])
    by_kind = dict((x["kind"], x) for x in r["leases"])
    assert by_kind["disk"]["disk"] == "vda" and by_kind["disk"]["path"] == disk
    assert by_kind["lease"]["key"] == uuid

    # checkpoints: created paused, resumed (leases taken), verified, and only then running
    assert names(r) == ["defined", "lease_files_created"] + START_ORDER, names(r)
    assert_in_order(r, START_ORDER)
    assert all(c["ok"] and c["host"] == HV1 for c in r["lock_checkpoints"])
    assert checkpoint(r, "lease_files_created")["resources"] == [vm_lease]
    assert sorted(checkpoint(r, "leases_verified")["resources"]) == sorted([disk_lease(lab, disk), vm_lease])
    assert at(checkpoint(r, "created_paused")) < at(checkpoint(r, "resumed"))

    dom_id = r["domain"]["id"]
    assert_unchanged_in_every_mode(lab, HV1, args)
    assert lab.virsh(HV1, "domid", guest_name).stdout.strip() == str(dom_id)  # never restarted
    assert lock_holder(vm_lease) == lab.virtlockd_pid(HV1)


def test_create_from_xml_is_idempotent(lab, guest_name, scratch):
    disk = scratch.disk()
    xml = tiny_domain_xml(guest_name, disk=disk)
    args = {"name": guest_name, "state": "present", "xml": xml}

    r = lab.module(HV1, MODULE, args, check=True)
    assert r["changed"] is True and r["actions"] == ["define"], r
    assert lab.domain_state(HV1, guest_name) is None

    r = lab.module(HV1, MODULE, args, diff=True)
    assert r["changed"] is True and r["actions"] == ["define"], r
    assert r["domain"]["state"] == "shutoff" and r["domain"]["persistent"] is True
    assert r["diff"]["before"].startswith("state: absent\n") and disk in r["diff"]["after"], r["diff"]
    assert lab.domain_state(HV1, guest_name) == "shut off"
    # defined, not started: the lease is named but nobody holds it
    [lease] = r["leases"]
    assert lease["resource"] == disk_lease(lab, disk) and lease["held"] is False

    # libvirt filled in a UUID, MAC-less devices got addresses, a controller, ...: none of it is a change
    assert_unchanged_in_every_mode(lab, HV1, args)
    # the same without the <name> (the module adds it)
    r = lab.module(HV1, MODULE, dict(args, xml=xml.replace("<name>{}</name>".format(guest_name), "")))
    assert r["changed"] is False and r["actions"] == [], r


# --------------------------------------------------------------------------- a change to a running guest
def test_memory_change_applies_at_next_boot_then_restart_on_change(lab, guest_name, scratch):
    disk = scratch.disk()
    key = scratch.add(os.path.join(lab.lockspace_dir, guest_name + "-lease"))
    base = {"name": guest_name, "state": "running", "spec": tiny_spec(disk, lease={"key": guest_name + "-lease"})}
    r = lab.module(HV1, MODULE, base)
    assert r["changed"] is True and r["domain"]["state"] == "running", r.get("msg")
    first_id = r["domain"]["id"]
    assert dominfo(lab, HV1, guest_name)["Max memory"] == "32768 KiB"

    bigger = dict(base, spec=tiny_spec(disk, memory="48MiB", lease={"key": guest_name + "-lease"}))
    r = lab.module(HV1, MODULE, bigger, diff=True)
    assert r.get("failed") is not True, r.get("msg")
    assert r["changed"] is True and r["actions"] == ["redefine"], r
    assert r["pending_restart"] is True
    assert any("memory" in d.lower() for d in r["differences"]), r["differences"]
    assert "32768" in r["diff"]["before"] and "49152" not in r["diff"]["before"], r["diff"]
    assert "49152" in r["diff"]["after"] and "32768" not in r["diff"]["after"], r["diff"]
    assert "pending_restart" in names(r)
    # applied to the definition, not to what runs
    assert inactive_memory_kib(lab, HV1, guest_name) == 48 * 1024
    info = dominfo(lab, HV1, guest_name)
    assert info["State"] == "running" and info["Id"] == str(first_id) and info["Max memory"] == "32768 KiB"
    assert_held_on(lab, HV1, r, [disk_lease(lab, disk), key])

    # the same again: nothing to change, still pending
    r = lab.module(HV1, MODULE, bigger)
    assert r["changed"] is False and r["actions"] == [] and r["pending_restart"] is True, r

    # restart_on_change in check mode predicts the restart, does nothing
    restart = dict(bigger, restart_on_change=True, timeout=2, force=True)
    r = lab.module(HV1, MODULE, restart, check=True)
    assert r["changed"] is True and r["actions"] == ["restart"], r
    assert dominfo(lab, HV1, guest_name)["Id"] == str(first_id)

    # BIOS guest ignores the ACPI shutdown: force destroys it after 2 s, then it boots with the new memory
    r = lab.module(HV1, MODULE, restart)
    assert r.get("failed") is not True, r.get("msg")
    assert r["changed"] is True and r["actions"] == ["restart"] and r["pending_restart"] is False, r
    assert_in_order(r, ["shutdown_requested", "stop_timeout", "destroyed", "leases_released"] + START_ORDER)
    assert checkpoint(r, "leases_released")["ok"] is True
    info = dominfo(lab, HV1, guest_name)
    assert info["State"] == "running" and info["Id"] != str(first_id)
    assert info["Max memory"] == "49152 KiB" and info["Used memory"] == "49152 KiB", info
    assert r["domain"]["id"] == int(info["Id"])
    assert_held_on(lab, HV1, r, [disk_lease(lab, disk), key])

    r = lab.module(HV1, MODULE, restart)
    assert r["changed"] is False and r["pending_restart"] is False, r


# --------------------------------------------------------------------------- leases across hosts
def test_vm_lease_held_on_hv1_refuses_the_start_on_hv2_until_released(lab, guest_name, scratch):
    """The guest has no leased disk (think of an rbd disk, which lockd never leases): only its VM lease keeps
    it from running twice."""
    key = guest_name + "-lease"
    vm_lease = scratch.add(os.path.join(lab.lockspace_dir, key))
    args = {"name": guest_name, "state": "running", "spec": tiny_spec(lease={"key": key})}
    vl1, vl2 = lab.virtlockd_pid("hv1"), lab.virtlockd_pid("hv2")

    r = lab.module("hv1", MODULE, args)
    assert r["changed"] is True, r.get("msg")
    assert_held_on(lab, "hv1", r, [vm_lease])
    hv1_id = lab.virsh("hv1", "domid", guest_name).stdout.strip()

    r = lab.module_fails("hv2", MODULE, args)
    assert vm_lease in r["msg"] and "key {}".format(key) in r["msg"], r["msg"]
    assert "held by pid {}".format(vl1) in r["msg"], r["msg"]
    assert r["libvirt_error"]["code"] == 87 and key in r["libvirt_error"]["message"], r["libvirt_error"]
    assert names(r) == ["defined", "created_paused", "acquire_failed", "destroyed_paused"], names(r)
    assert all(c["host"] == "hv2" for c in r["lock_checkpoints"])
    # nothing runs on hv2; hv1's guest untouched, still holding its lease
    assert lab.domain_state("hv2", guest_name) == "shut off"
    assert lab.domain_state("hv1", guest_name) == "running"
    assert lab.virsh("hv1", "domid", guest_name).stdout.strip() == hv1_id
    assert lock_holder(vm_lease) == vl1

    # with acquire_timeout the start on hv2 keeps retrying, and succeeds once hv1's guest is destroyed
    # hv1's guest is destroyed a few seconds after hv2's first attempt was refused (its paused guest destroyed)
    destroyed = {}
    events = subprocess.Popen(
        [LAB, "exec", "hv2", "--", "virsh", "-q", "-c", "qemu:///system", "event", "--domain", guest_name]
        + ["--event", "lifecycle", "--loop", "--timeout", "60"],
        stdout=subprocess.PIPE,
        text=True,
    )

    def destroy_on_hv1_after_a_refusal():
        for line in events.stdout:
            if "Stopped" in line:
                break
        else:
            return
        time.sleep(3)
        destroyed["before"] = datetime.now(timezone.utc)
        destroyed["res"] = lab.virsh("hv1", "destroy", guest_name, check=False)

    destroyer = threading.Thread(target=destroy_on_hv1_after_a_refusal, daemon=True)
    destroyer.start()
    try:
        r = lab.module("hv2", MODULE, dict(args, lock={"acquire_timeout": 20}))
    finally:
        events.terminate()
        events.wait(timeout=10)
        destroyer.join(timeout=30)
    assert "res" in destroyed, r.get("lock_checkpoints")
    assert destroyed["res"].returncode == 0, destroyed["res"].stderr
    assert r.get("failed") is not True, r.get("msg")
    assert r["changed"] is True and r["actions"] == ["start"] and r["domain"]["state"] == "running", r
    failures = [c for c in r["lock_checkpoints"] if c["name"] == "acquire_failed"]
    assert failures and all(key in c["detail"] for c in failures), names(r)
    assert at(failures[0]) < destroyed["before"], (failures[0], destroyed)  # it was refused while hv1 ran
    # hv2 took the lease only once hv1's guest was being destroyed (virsh returns a little after qemu died)
    assert at(checkpoint(r, "resumed")) > destroyed["before"]
    assert names(r)[-len(START_ORDER) :] == START_ORDER
    assert_in_order(r, START_ORDER)
    assert lab.domain_state("hv1", guest_name) == "shut off"
    assert lab.domain_state("hv2", guest_name) == "running"
    assert_held_on(lab, "hv2", r, [vm_lease])
    assert lock_holder(vm_lease) == vl2


def test_lock_required_on_a_host_without_lock_manager_fails_and_runs_nothing(lab, guest_name, scratch):
    host = lab.unlocked_hosts[0]
    qemu_conf = lab.exec(host, "cat", "/etc/libvirt/qemu.conf").stdout
    assert not re.search(r"^\s*lock_manager\s*=", qemu_conf, re.M)  # what this test relies on
    disk = scratch.disk()
    args = {"name": guest_name, "state": "running", "spec": tiny_spec(disk), "lock": {"required": True}}

    r = lab.module_fails(host, MODULE, args)
    assert "lock.required" in r["msg"] and "no lock manager" in r["msg"], r["msg"]
    assert guest_name in r["msg"]
    assert "created_paused" not in names(r) and "running" not in names(r), names(r)
    assert lab.domain_state(host, guest_name) in (None, "shut off")
    assert guest_name not in lab.virsh(host, "list", "--name").stdout.split()
    assert lab.exec(host, "pgrep", "-f", "[g]uest={}".format(guest_name), check=False).returncode == 1
    assert lock_holder(disk_lease(lab, disk)) is None


# --------------------------------------------------------------------------- run states
def test_shutdown_of_a_bios_guest_honours_timeout_and_force(lab, guest_name, scratch):
    disk = scratch.disk()
    assert define_and_start(lab, HV1, tiny_domain_xml(guest_name, disk=disk)).returncode == 0
    lease = disk_lease(lab, disk)
    vl1 = lab.virtlockd_pid(HV1)
    assert lock_holder(lease) == vl1
    dom_id = lab.virsh(HV1, "domid", guest_name).stdout.strip()

    r = lab.module_fails(HV1, MODULE, {"name": guest_name, "state": "shutdown", "timeout": 3})
    assert "did not stop within 3s" in r["msg"] and "force" in r["msg"], r["msg"]
    assert names(r) == ["shutdown_requested", "stop_timeout"], names(r)
    waited = (at(checkpoint(r, "stop_timeout")) - at(checkpoint(r, "shutdown_requested"))).total_seconds()
    assert 2.99 <= waited < 6, waited  # `at` has millisecond resolution
    assert lab.domain_state(HV1, guest_name) == "running"
    assert lab.virsh(HV1, "domid", guest_name).stdout.strip() == dom_id
    assert lock_holder(lease) == vl1

    r = lab.module(HV1, MODULE, {"name": guest_name, "state": "shutdown", "timeout": 2, "force": True})
    assert r.get("failed") is not True, r.get("msg")
    assert r["changed"] is True and r["actions"] == ["shutdown"], r
    assert names(r) == ["shutdown_requested", "stop_timeout", "destroyed", "leases_released"], names(r)
    assert checkpoint(r, "leases_released")["ok"] is True
    assert checkpoint(r, "leases_released")["resources"] == [lease]
    assert r["domain"]["state"] == "shutoff"
    assert lab.domain_state(HV1, guest_name) == "shut off"
    assert lock_holder(lease) is None
    assert [x["held"] for x in r["leases"]] == [False]

    r = lab.module(HV1, MODULE, {"name": guest_name, "state": "shutdown", "timeout": 2})
    assert r["changed"] is False and r["actions"] == [], r


def test_paused_destroyed_absent_and_remove_storage(lab, guest_name, scratch):
    disk = scratch.disk()
    lease = disk_lease(lab, disk)
    vl1 = lab.virtlockd_pid(HV1)
    xml = tiny_domain_xml(guest_name, disk=disk)

    def run(state, **kw):
        r = lab.module(HV1, MODULE, dict({"name": guest_name, "state": state}, **kw))
        assert r.get("failed") is not True, (state, r.get("msg"))
        return r

    # paused from nothing: a qemu guest started paused holds no lease
    r = run("paused", xml=xml)
    assert r["actions"] == ["define", "start_paused"] and r["domain"]["state"] == "paused", r
    assert names(r) == ["defined", "created_paused", "paused"], names(r)
    assert lab.domain_state(HV1, guest_name) == "paused"
    assert lock_holder(lease) is None and [x["held"] for x in r["leases"]] == [False]

    r = run("running")
    assert r["actions"] == ["resume"] and r["domain"]["state"] == "running", r
    assert_in_order(r, ["resumed", "leases_verified", "running"])
    assert_held_on(lab, HV1, r, [lease])

    # pausing a qemu guest releases its leases
    r = run("paused")
    assert r["actions"] == ["pause"] and names(r) == ["paused", "leases_released"], r
    assert lab.domain_state(HV1, guest_name) == "paused"
    assert lock_holder(lease) is None
    r = run("paused", xml=xml)
    assert r["changed"] is False and r["actions"] == [], r

    # a paused guest cannot shut down gracefully: said so without force, destroyed with it
    r = lab.module_fails(HV1, MODULE, {"name": guest_name, "state": "shutdown", "timeout": 2})
    assert "is paused" in r["msg"] and "force: true" in r["msg"], r["msg"]
    assert lab.domain_state(HV1, guest_name) == "paused"
    r = run("shutdown", timeout=2, force=True)
    assert r["actions"] == ["shutdown"] and names(r) == ["destroyed"] and r["domain"]["state"] == "shutoff", r
    assert lab.domain_state(HV1, guest_name) == "shut off"

    r = run("running")
    assert r["actions"] == ["start"] and names(r)[-len(START_ORDER) :] == START_ORDER, r
    assert_held_on(lab, HV1, r, [lease])
    r = run("destroyed")
    assert r["actions"] == ["destroy"] and r["domain"]["state"] == "shutoff", r
    assert names(r) == ["destroyed", "leases_released"] and checkpoint(r, "leases_released")["ok"] is True
    assert lab.domain_state(HV1, guest_name) == "shut off"
    assert lock_holder(lease) is None
    r = run("destroyed")
    assert r["changed"] is False, r

    # absent on a running guest: destroyed, undefined; the image kept without remove_storage (check mode)
    run("running")
    assert lock_holder(lease) == vl1
    r = lab.module(HV1, MODULE, {"name": guest_name, "state": "absent", "remove_storage": True}, check=True)
    assert r["actions"] == ["destroy", "undefine", "remove_storage"], r
    assert r["removed_storage"] == [{"pool": None, "volume": None, "path": disk}]
    assert lab.domain_state(HV1, guest_name) == "running" and os.path.exists(disk)

    r = run("absent", remove_storage=True)
    assert r["actions"] == ["destroy", "undefine", "remove_storage"] and r["domain"] is None, r
    assert_in_order(r, ["destroyed", "leases_released", "undefined", "storage_removed"])
    assert checkpoint(r, "storage_removed")["resources"] == [disk]
    assert lab.domain_state(HV1, guest_name) is None
    assert not os.path.exists(disk)
    assert lock_holder(lease) is None

    for check in (False, True):
        r = lab.module(HV1, MODULE, {"name": guest_name, "state": "absent", "remove_storage": True}, check=check)
        assert r["changed"] is False and r["actions"] == [] and r["domain"] is None, r


def test_absent_keeps_storage_by_default(lab, guest_name, scratch):
    disk = scratch.disk()
    r = lab.module(HV1, MODULE, {"name": guest_name, "xml": tiny_domain_xml(guest_name, disk=disk)})
    assert r["actions"] == ["define"], r
    r = lab.module(HV1, MODULE, {"name": guest_name, "state": "absent"})
    assert r["actions"] == ["undefine"] and "removed_storage" not in r, r
    assert lab.domain_state(HV1, guest_name) is None
    assert os.path.exists(disk)


# --------------------------------------------------------------------------- bad input
ENTITY_XML = (
    '<?xml version="1.0"?>\n<!DOCTYPE domain [<!ENTITY host SYSTEM "file:///etc/hostname">]>\n'
    "<domain type='qemu'><name>{name}</name><description>&host;</description><memory unit='MiB'>32</memory>"
    "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
)

BAD_INPUT = {
    "malformed_xml": (
        lambda n: {"xml": "<domain type='qemu'><name>{}</name><memory>32</memory>".format(n)},
        "xml is not well-formed",
    ),
    "xml_name_differs": (lambda n: {"xml": tiny_domain_xml(n + "-other")}, "differs from name"),
    "xml_external_entity": (lambda n: {"xml": ENTITY_XML.format(name=n)}, "external entity"),
    "unknown_spec_keys": (lambda n: {"spec": dict(tiny_spec(), memroy=64, vcpu=2)}, "spec.memroy"),
    "negative_memory": (lambda n: {"spec": tiny_spec(memory=-32)}, "spec.memory must be between 1 MiB"),
    "absurd_memory": (lambda n: {"spec": tiny_spec(memory="64TiB")}, "spec.memory must be between 1 MiB"),
    "xml_and_spec": (
        lambda n: {"xml": tiny_domain_xml(n), "spec": tiny_spec()},
        "mutually exclusive: xml|spec",
    ),
    "unreachable_ssh_uri": (
        lambda n: {"spec": tiny_spec(), "uri": "qemu+ssh://127.0.0.1:1/system"},
        "cannot connect to qemu+ssh://127.0.0.1:1/system",
    ),
    "missing_unix_socket": (
        lambda n: {"spec": tiny_spec(), "uri": "qemu+unix:///system?socket=/run/lockstep-no-such/libvirt-sock"},
        "cannot connect to qemu+unix:///system?socket=/run/lockstep-no-such/libvirt-sock",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_a_clear_error_and_changes_nothing(lab, guest_name, case):
    make, message = BAD_INPUT[case]
    args = dict(make(guest_name), name=guest_name, state="running")
    r = lab.module_fails(HV1, MODULE, args)
    assert message in r["msg"], r["msg"]
    assert r.get("changed") is not True, r
    assert not r.get("actions"), r
    for host in lab.all_hosts:
        assert lab.domain_state(host, guest_name) is None, host
    if case.startswith(("unreachable", "missing")):
        assert r["libvirt_error"]["code"] and r["libvirt_error"]["message"], r
    if case == "unknown_spec_keys":
        assert "spec.vcpu" in r["msg"] and "unsupported parameters" in r["msg"].lower(), r["msg"]


# --------------------------------------------------------------------------- EXAMPLES, as pasted
def rename(value, names):
    """``value`` (the EXAMPLES, a task name) with each of ``names`` {as written: own name} replaced."""
    if isinstance(value, str):
        for old, new in names.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return dict((rename(k, names), rename(v, names)) for k, v in value.items())
    if isinstance(value, list):
        return [rename(v, names) for v in value]
    return value


def load_examples():
    """The module's EXAMPLES, read from the module file itself."""
    if COLLECTIONS not in sys.path:
        sys.path.insert(0, COLLECTIONS)
    path = os.path.join(REPO, "plugins", "modules", "domain.py")
    spec = importlib.util.spec_from_file_location("lockstep_virt_domain_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return yaml.safe_load(module.EXAMPLES)


def test_examples_run_as_pasted_on_hv1(lab):
    """The EXAMPLES as pasted, but for their names: guests web1 and db1 are this run's own (a user's web1 on
    the lab is left alone), and the default lab's shared directory is this lab's."""
    tag = "ex" + os.urandom(3).hex().translate(str.maketrans("0123456789abcdef", "ghijklmnopqrstuv"))  # no b, d, 1
    renames = {
        "/var/lib/lockstep-lab/shared": lab.shared_dir,
        "web1": tag + "web1",
        "db1": tag + "db1",
        "sb1": tag + "sb1",
    }
    web1, db1, sb1 = renames["web1"], renames["db1"], renames["sb1"]
    # the wait_for example needs a guest whose OS asks its network's DHCP for an address, which a lab guest has
    # not: test_wait_for_address.py runs the same options, with a lease the network really gave
    waiting = (
        "Start a guest and wait for the address its network's DHCP (or its guest agent) gives it",
        "Its first address",
    )
    tasks = [t for t in rename(load_examples(), renames) if t["name"] not in waiting]
    images = [os.path.join(lab.images_dir, n + ".qcow2") for n in (web1, db1)]
    leftovers = []

    def task(name):
        return run.task(rename(name, renames), HV1)

    def clean():
        for name in (web1, db1, sb1):
            lab.virsh(HV1, "destroy", name, check=False)
            lab.virsh(HV1, "undefine", "--nvram", "--tpm", name, check=False)
        for path in images + [disk_lease(lab, p) for p in images] + leftovers:
            if os.path.exists(path) and lock_holder(path) is None:
                os.unlink(path)

    for name in (web1, db1, sb1):
        assert lab.domain_state(HV1, name) is None, "{} already exists on {}".format(name, HV1)
    assert not any(os.path.exists(p) for p in images), images
    try:
        run = lab.playbook(play(HV1, *tasks))
        started = task("Define a small BIOS guest from a spec, with a VM lease, and start it")
        if started.get("domain"):
            leftovers.append(os.path.join(lab.lockspace_dir, started["domain"]["uuid"]))
        assert run.rc == 0, run.stdout[-4000:]
        assert [r["task"] for r in run.results] == [t["name"] for t in tasks]
        assert all(r["status"] == "ok" for r in run.results), [(r["task"], r["status"]) for r in run.results]

        assert started["changed"] is True and started["actions"] == ["define", "start"]
        assert names(started)[-len(START_ORDER) :] == START_ORDER
        assert all(c["ok"] for c in started["lock_checkpoints"])
        # held when the task ended (web1 is shut down later in the play)
        resources = sorted(x["resource"] for x in started["leases"])
        assert resources == sorted([disk_lease(lab, images[0]), leftovers[0]])
        assert all(x["held_here"] and x["holder_pid"] == lab.virtlockd_pid(HV1) for x in started["leases"])
        shown = task("Show when each lease was taken")
        assert shown[web1 + ".lock_checkpoints"] == started["lock_checkpoints"]

        defined = task("Define a guest from libvirt XML without starting it")
        assert defined["changed"] is True and defined["actions"] == ["define"]
        assert defined["domain"]["state"] == "shutoff"

        secure = task("A UEFI guest with Secure Boot and a TPM 2.0 (no disk - it stays in its firmware)")
        assert secure["changed"] is True and secure["actions"] == ["define", "start"]
        assert "secure='yes'" in lab.virsh(HV1, "dumpxml", sb1).stdout

        grown = task("Give web1 more memory; it applies at the next boot unless restart_on_change is set")
        assert grown["changed"] is True and grown["actions"] == ["redefine"] and grown["pending_restart"] is True

        stopped = task("Shut down gracefully, destroying it after 30 seconds if it ignores ACPI")
        assert stopped["changed"] is True
        assert names(stopped) == ["shutdown_requested", "stop_timeout", "destroyed", "leases_released"]

        removed = task("Remove the guest with its nvram and snapshot metadata, keeping its disks")
        assert removed["changed"] is True and removed["actions"] == ["undefine"]

        assert lab.domain_state(HV1, web1) == "shut off"
        assert inactive_memory_kib(lab, HV1, web1) == 64 * 1024
        assert lab.domain_state(HV1, db1) is None
        assert os.path.exists(images[0])
        assert lock_holder(disk_lease(lab, images[0])) is None and lock_holder(leftovers[0]) is None
    finally:
        clean()
    assert lab.domain_state(HV1, web1) is None and not os.path.exists(images[0])
