"""The snapshot and snapshot_info modules in-process, on libvirt's test:///default driver (which keeps
snapshot metadata and reverts a guest's state, without disks or leases)."""

import libvirt
import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.reporters.snapshot_info import (
    MANAGED_MARK,
    migration_blockers,
    split_description,
)
from ansible_collections.lockstep.virt.plugins.modules import snapshot as snapshot_module
from ansible_collections.lockstep.virt.plugins.modules import snapshot_info as info_module

URI = "test:///default"


def args(**kw):
    out = {"uri": URI, "domain": "test", "name": "s1"}
    out.update(kw)
    return out


def test_create_idempotent_and_marked(hv, run_module):
    r = run_module(snapshot_module.main, args(description="first"), check_mode=True, diff=True)
    assert r["changed"] and r["actions"] == ["create"] and r["snapshot"]["managed"]
    assert hv.lookupByName("test").snapshotNum(0) == 0
    r = run_module(snapshot_module.main, args(description="first"), diff=True)
    assert r["actions"] == ["create"] and r["snapshot"]["state"] == "running" and r["snapshot"]["current"]
    assert r["snapshot"]["description"] == "first" and r["snapshot"]["memory"] == "internal"
    assert [c["name"] for c in r["lock_checkpoints"]][:1] == ["snapshot_created"]
    xml = hv.lookupByName("test").snapshotLookupByName("s1", 0).getXMLDesc(0)
    assert MANAGED_MARK in xml
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = run_module(snapshot_module.main, args(description="first"), check_mode=check, diff=diff)
        assert not r["changed"] and r["actions"] == [], (check, diff, r)
    r = run_module(snapshot_module.main, args(description="second"))
    assert r["actions"] == ["redescribe"] and r["snapshot"]["description"] == "second" and r["snapshot"]["managed"]
    assert r["snapshot"]["current"]


def test_tree_and_migration_blockers(hv, run_module):
    run_module(snapshot_module.main, args(name="a"))
    run_module(snapshot_module.main, args(name="b"))
    run_module(snapshot_module.main, args(name="a", state="reverted"))  # current: a, running as taken
    dom = hv.lookupByName("test")
    dom.snapshotCreateXML("<domainsnapshot><name>c</name><description>by hand</description></domainsnapshot>", 0)
    r = run_module(info_module.main, {"uri": URI, "domain": "test"})
    got = [(s["name"], s["parent"], s["depth"], s["children"]) for s in r["snapshots"]]
    assert got == [("a", None, 0, ["b", "c"]), ("b", "a", 1, []), ("c", "a", 1, [])]
    assert r["current"] == "c" and [s["managed"] for s in r["snapshots"]] == [True, True, False]
    assert r["snapshots"][2]["description"] == "by hand" and r["snapshots"][0]["created"].endswith("Z")
    assert [b["name"] for b in r["migration_blockers"]] == ["a", "b", "c"]
    assert all(not b["external"] and "internal" in b["reason"] for b in r["migration_blockers"])
    assert migration_blockers(dom) == r["migration_blockers"]
    r = run_module(info_module.main, {"uri": URI, "domain": "nope"})
    assert r["failed"] and "not defined" in r["msg"]


def test_keep_removes_oldest_of_its_own(hv, run_module):
    dom = hv.lookupByName("test")
    dom.snapshotCreateXML("<domainsnapshot><name>manual</name></domainsnapshot>", 0)
    for i in range(3):
        r = run_module(snapshot_module.main, args(name="n{}".format(i), keep=2))
    assert r["actions"] == ["create", "prune"] and r["removed"] == ["n0"]
    # the test driver's creation times have a one-second resolution: the order is by time, then name
    names = sorted(s.getName() for s in dom.listAllSnapshots(0))
    assert names == ["manual", "n1", "n2"]
    r = run_module(snapshot_module.main, args(name="n2", keep=2))
    assert not r["changed"]
    r = run_module(snapshot_module.main, {"uri": URI, "domain": "test", "keep": 1}, check_mode=True)
    assert r["actions"] == ["prune"] and r["removed"] == ["n1"]
    assert len(dom.listAllSnapshots(0)) == 3


def test_revert_to_shut_off_snapshot_and_back(hv, run_module):
    dom = hv.lookupByName("test")
    dom.destroy()
    run_module(snapshot_module.main, args(name="off"))
    dom.create()
    run_module(snapshot_module.main, args(name="on"))
    r = run_module(snapshot_module.main, args(name="off", state="reverted"), check_mode=True)
    assert r["actions"] == ["revert"] and dom.isActive()
    r = run_module(snapshot_module.main, args(name="off", state="reverted"), diff=True)
    assert r["actions"] == ["revert"] and not dom.isActive() and r["domain"]["state"] == "shutoff"
    assert "reverted" in [c["name"] for c in r["lock_checkpoints"]]
    again = run_module(snapshot_module.main, args(name="off", state="reverted"))
    assert again["changed"] and again["actions"] == ["revert"]  # an action: it always reverts
    r = run_module(snapshot_module.main, args(name="on", state="reverted"))
    names = [c["name"] for c in r["lock_checkpoints"]]
    assert names[:2] == ["reverted_paused", "resumed"] and names[-1] == "running", names
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and r["domain"]["state"] == "running"
    # the snapshot is current and the guest runs as it was taken: a revert still rolls back (the guest may
    # have changed since, which libvirt's metadata cannot tell)
    taken = dom.info()[2]
    dom.setMemory(taken // 2)
    again = run_module(snapshot_module.main, args(name="on", state="reverted"))
    assert again["changed"] and again["actions"] == ["revert"]
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and dom.info()[2] == taken


def test_absent(hv, run_module):
    run_module(snapshot_module.main, args())
    for check in (True, False):
        r = run_module(snapshot_module.main, args(state="absent"), check_mode=check)
        assert r["actions"] == ["delete"] and r["snapshot"] is None
    r = run_module(snapshot_module.main, args(state="absent"), diff=True)
    assert not r["changed"] and hv.lookupByName("test").snapshotNum(0) == 0


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"name": None}, "name is required"),
        ({"keep": 0}, "keep must be 1"),
        ({"disk_only": True, "memory": True}, "no memory state"),
        ({"quiesce": True}, "quiesce is for disk_only"),
        ({"memory": False}, "always includes its memory"),
        ({"domain": "nope"}, "not defined"),
        ({"state": "reverted", "name": "missing"}, "does not exist"),
        ({"disk_only": True, "quiesce": True}, "has no org.qemu.guest_agent.0 channel"),
    ],
)
def test_bad_input_changes_nothing(hv, run_module, kw, needle):
    r = run_module(snapshot_module.main, dict((k, v) for k, v in args(**kw).items() if v is not None))
    assert r["failed"] and needle in r["msg"], r
    assert hv.lookupByName("test").snapshotNum(0) == 0


def test_split_description():
    assert split_description("x\n" + MANAGED_MARK) == ("x", True)
    assert split_description(MANAGED_MARK) == (None, True)
    assert split_description("plain") == ("plain", False)
    assert split_description(None) == (None, False)
