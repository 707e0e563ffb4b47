"""The apply module, run in-process against libvirt's test:///default driver."""

import pytest

from ansible_collections.lockstep.virt.plugins.modules import apply as apply_module

URI = "test:///default"
POOL_PATH = "/var/lib/lockstep-unit/apply-pool"


def net(name="an1", **kw):
    item = {
        "name": name,
        "state": "active",
        "spec": {"forward": "nat", "ipv4": {"address": "10.79.1.1", "prefix": 24}},
    }
    item.update(kw)
    return item


def pool(name="ap1", **kw):
    item = {"name": name, "state": "active", "spec": {"type": "dir", "path": POOL_PATH}}
    item.update(kw)
    return item


def vol(name="d1.qcow2", pool_name="default-pool", **kw):
    item = {"pool": pool_name, "name": name, "capacity": "16M", "format": "qcow2"}
    item.update(kw)
    return item


def dom(name, state="running", network="default", **kw):
    item = {
        "name": name,
        "state": state,
        "spec": {
            "memory": 32,
            "vcpus": 1,
            "disks": [{"path": "/var/lib/lockstep-lab/shared/images/{}.qcow2".format(name), "format": "qcow2"}],
            "interfaces": [{"network": network}],
        },
    }
    item.update(kw)
    return item


def run(run_module, check_mode=False, diff=False, **args):
    return run_module(apply_module.main, dict(args, uri=URI), check_mode=check_mode, diff=diff)


def by_name(result):
    return dict((e["name"], e) for e in result["results"])


def test_creates_in_dependency_order_then_unchanged_in_every_mode(hv, run_module):
    args = {
        "domains": [dom("a1"), dom("a2", state="present", network="an1")],
        "volumes": [vol()],
        "networks": [net()],
    }
    first = run(run_module, **args)
    assert first["changed"] is True and not first.get("failed"), first
    assert [(e["kind"], e["name"]) for e in first["results"]] == [
        ("network", "an1"),
        ("volume", "d1.qcow2"),
        ("domain", "a1"),
        ("domain", "a2"),
    ]
    assert first["summary"] == {"created": 4, "changed": 0, "unchanged": 0, "removed": 0, "failed": 0, "skipped": 0}
    r = by_name(first)
    assert r["a1"]["actions"] == ["define", "start"] and r["a2"]["actions"] == ["define"]
    assert [c["name"] for c in r["a1"]["lock_checkpoints"]][0] == "defined"
    assert hv.lookupByName("a1").isActive() and not hv.lookupByName("a2").isActive()
    assert hv.networkLookupByName("an1").isActive()
    for check_mode, diff in ((False, False), (True, False), (False, True), (True, True)):
        again = run(run_module, check_mode=check_mode, diff=diff, **args)
        assert again["changed"] is False, (check_mode, diff, again)
        assert again["summary"]["unchanged"] == 4
        assert all(e["actions"] == [] for e in again["results"])
        if diff:
            assert all(e["diff"]["before"] == e["diff"]["after"] for e in again["results"])
            assert again["diff"] == []
        else:
            assert "diff" not in again and all("diff" not in e for e in again["results"])


def test_check_mode_predicts_and_changes_nothing(hv, run_module):
    args = {"networks": [net()], "pools": [pool()], "domains": [dom("c1", network="an1")]}
    r = run(run_module, check_mode=True, diff=True, **args)
    assert r["changed"] and not r.get("failed"), r
    assert [e["actions"] for e in r["results"]] == [
        ["define", "start"],
        ["define", "build", "start"],
        ["define", "start"],
    ]
    assert [d["after_header"] for d in r["diff"]] == [
        "network an1 (desired)",
        "storage pool ap1 (desired)",
        "c1 (desired)",
    ]
    assert "an1" not in hv.listNetworks() + hv.listDefinedNetworks()
    assert "c1" not in [d.name() for d in hv.listAllDomains()]


def test_prune_removes_only_marked_objects_of_the_kinds_given(hv, run_module):
    run(run_module, domains=[dom("p1"), dom("p2", state="present")], networks=[net()])
    # an object the collection did not define: never touched
    hv.defineXML("<domain type='test'><name>unmarked</name><memory>32768</memory><os><type>hvm</type></os></domain>")
    # networks not given: the marked network an1 stays
    r = run(run_module, domains=[dom("p1")], prune=True)
    assert not r.get("failed"), r
    assert [(e["name"], e["outcome"], e.get("pruned")) for e in r["results"]] == [
        ("p1", "unchanged", None),
        ("p2", "removed", True),
    ]
    names = [d.name() for d in hv.listAllDomains()]
    assert "p2" not in names and "unmarked" in names and "test" in names and "p1" in names
    assert "an1" in hv.listNetworks()
    # check mode predicts a prune of everything marked and removes nothing
    r = run(run_module, check_mode=True, domains=[], networks=[], prune=True)
    assert sorted(e["name"] for e in r["results"]) == ["an1", "p1"]
    assert [e["kind"] for e in r["results"]] == ["domain", "network"]  # removal in reverse order
    assert "p1" in [d.name() for d in hv.listAllDomains()]


def test_prune_pattern_leaves_other_marked_objects_alone(hv, run_module):
    # marked: the team's t-1, t-2 and another's o-1 (a guest and a network each kind)
    run(run_module, domains=[dom("t-1"), dom("t-2", state="present"), dom("o-1", state="present")], networks=[net()])
    args = {"domains": [dom("t-1")], "networks": [], "prune": True, "prune_pattern": "t-*"}
    r = run(run_module, check_mode=True, **args)
    assert [(e["name"], e["outcome"]) for e in r["results"] if e.get("pruned")] == [("t-2", "removed")], r
    r = run(run_module, **args)
    assert not r.get("failed"), r
    assert [e["name"] for e in r["results"] if e.get("pruned")] == ["t-2"]
    names = [d.name() for d in hv.listAllDomains()]
    assert "t-2" not in names and "t-1" in names and "o-1" in names
    assert "an1" in hv.listNetworks()  # marked, listed kind, name not matching: left alone
    # without the pattern the same run would take o-1 and an1 too
    r = run(run_module, check_mode=True, domains=[dom("t-1")], networks=[], prune=True)
    assert sorted(e["name"] for e in r["results"] if e.get("pruned")) == ["an1", "o-1"]


def test_one_failure_does_not_hide_the_others(hv, run_module):
    # the test driver refuses a volume larger than its pool's free space
    args = {
        "volumes": [vol("huge.qcow2", capacity="1P"), vol("fine.qcow2")],
        "domains": [
            dom(
                "f1", state="present", spec={"memory": 32, "disks": [{"pool": "default-pool", "volume": "huge.qcow2"}]}
            ),
            dom("f2", state="present"),
        ],
    }
    r = run(run_module, **args)
    assert r["failed"] is True, r
    out = by_name(r)
    assert out["huge.qcow2"]["outcome"] == "failed" and out["huge.qcow2"]["actions"] == ["create"]
    assert out["f1"]["outcome"] == "skipped" and "volume default-pool/huge.qcow2" in out["f1"]["msg"]
    assert out["fine.qcow2"]["outcome"] == "created" and out["f2"]["outcome"] == "created"
    assert r["summary"] == {"created": 2, "changed": 0, "unchanged": 0, "removed": 0, "failed": 1, "skipped": 1}
    assert r["msg"].startswith("2 of 4 objects did not reach their state: volume huge.qcow2: ")
    assert "domain f1: domain f1 was skipped" in r["msg"]
    assert "f2" in [d.name() for d in hv.listAllDomains()] and "f1" not in [d.name() for d in hv.listAllDomains()]
    # a volume in a pool that failed is skipped, and so is the domain using it
    other_type = "<pool type='logical'><name>default-pool</name><target><path>/dev/vg0</path></target></pool>"
    r = run(
        run_module,
        pools=[{"name": "default-pool", "xml": other_type}],
        volumes=[vol("v2.qcow2")],
        domains=[
            dom("f3", state="present", spec={"memory": 32, "disks": [{"pool": "default-pool", "volume": "v2.qcow2"}]})
        ],
    )
    out = by_name(r)
    assert out["default-pool"]["outcome"] == "failed" and "type cannot change" in out["default-pool"]["msg"]
    assert out["v2.qcow2"]["outcome"] == "skipped" and "storage pool default-pool failed" in out["v2.qcow2"]["msg"]
    assert out["f3"]["outcome"] == "skipped"
    assert "v2.qcow2" not in hv.storagePoolLookupByName("default-pool").listVolumes()


@pytest.mark.parametrize(
    "args,needle",
    [
        ({"domains": [{"name": "x", "bogus": 1}]}, "domains[1] (x): unsupported option bogus"),
        ({"domains": [dom("x"), dom("x")]}, "domains[2] (x): x is listed twice"),
        ({"volumes": [{"name": "../v", "pool": "default-pool", "capacity": 1}]}, "volume default-pool/../v"),
        ({"networks": [{"name": "n", "xml": "<network><name>other</name></network>"}]}, "differs from name"),
        ({"domains": [{"name": "x", "xml": "<domain/>", "spec": {"memory": 32}}]}, "mutually exclusive"),
    ],
)
def test_bad_input_changes_nothing(hv, run_module, args, needle):
    before = sorted(d.name() for d in hv.listAllDomains())
    r = run(run_module, domains=[dom("ok1")] + args.pop("domains", []), **args)
    assert r["failed"] and needle in r["msg"], r
    assert r["msg"].startswith("nothing was changed")
    assert sorted(d.name() for d in hv.listAllDomains()) == before


def test_lock_for_all_and_per_item(hv, run_module):
    # test:///default has no lock manager: a lease-required start is refused before the guest runs
    r = run(run_module, domains=[dom("l1"), dom("l2", lock={"required": False})], lock={"required": True})
    out = by_name(r)
    assert r["failed"] and out["l1"]["outcome"] == "failed" and "lock.required" in out["l1"]["msg"]
    assert out["l2"]["outcome"] == "created" and hv.lookupByName("l2").isActive()
    assert not hv.lookupByName("l1").isActive()


def test_a_guest_item_waits_for_its_address_like_the_domain_module(hv, run_module):
    # the test driver knows no address from any source: the item fails after its wait_timeout, the others converge
    spec = {"memory": 32, "firmware": "uefi", "secure_boot": True, "tpm": {}}
    r = run(run_module, domains=[dom("w1", spec=spec, wait_for="address", wait_timeout=0), dom("w2", state="present")])
    out = by_name(r)
    assert r["failed"] is True
    assert out["w1"]["outcome"] == "failed" and out["w1"]["actions"] == ["define", "start"]
    assert "w1 has no address after 0 s" in out["w1"]["msg"] and out["w1"]["addresses"] == []
    assert out["w2"]["outcome"] == "created"
    bad = run(run_module, domains=[dom("w3", state="present", wait_for="address")])
    assert bad["failed"] is True and "wait_for: address needs state: running" in bad["msg"]
