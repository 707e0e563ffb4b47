"""lockstep.virt.apply on the lab's hosts: a network, a pool, volumes and guests converged in one task."""

import hashlib
import os
import random
import uuid

import pytest
from labkit import lock_holder

MODULE = "lockstep.virt.apply"


def disk_lease(lab, path):
    """virtlockd's indirect lease file of a disk: file_lockspace_dir/<sha256 of the path>."""
    return os.path.join(lab.lockspace_dir, hashlib.sha256(path.encode()).hexdigest())


@pytest.fixture
def world(lab):
    """Fresh names for a network, a pool (on the shared storage) and three guests; all removed afterwards."""
    suffix = uuid.uuid4().hex[:6]
    w = {
        "net": "ita-" + suffix,
        "bridge": "itab" + suffix,
        "subnet": "10.79.{}".format(random.randint(20, 249)),
        "pool": "ita-" + suffix,
        "pool_path": os.path.join(lab.shared_dir, "pools", "ita-" + suffix),
        "guests": ["ita-{}-{}".format(suffix, i) for i in range(3)],
        # this test run's own objects: what its prunes may remove (others' marked objects never match)
        "pattern": "ita-{}*".format(suffix),
        # marked by the collection, but not this test's: stand-ins for a user's (or the demo's) objects
        "foreign": "itf-" + suffix,
    }
    yield w
    hv1 = lab.hosts[0]
    for name in w["guests"] + ["ita-{}-x".format(suffix), w["foreign"]]:
        lab.cleanup_domain(name)
    lab.virsh(hv1, "net-undefine", w["foreign"], check=False)
    for vol in lab.virsh(hv1, "vol-list", w["pool"], check=False).stdout.split("\n"):
        if vol.strip():
            lab.virsh(hv1, "vol-delete", vol.split()[0], "--pool", w["pool"], check=False)
    lab.virsh(hv1, "pool-destroy", w["pool"], check=False)
    lab.virsh(hv1, "pool-undefine", w["pool"], check=False)
    lab.exec(hv1, "rm", "-rf", w["pool_path"], check=False)
    lab.virsh(hv1, "net-destroy", w["net"], check=False)
    lab.virsh(hv1, "net-undefine", w["net"], check=False)


def guest(w, name, state="running", **spec):
    out = {
        "type": "qemu",
        "memory": 32,
        "vcpus": 1,
        "boot": ["hd"],
        "disks": [{"pool": w["pool"], "volume": name + ".qcow2"}],
        "interfaces": [{"network": w["net"]}],
    }
    out.update(spec)
    return {"name": name, "state": state, "spec": out}


def host_args(w, guests=None, **kw):
    guests = w["guests"] if guests is None else guests
    out = {
        "networks": [
            {
                "name": w["net"],
                "state": "active",
                "spec": {
                    "forward": "nat",
                    "bridge": w["bridge"],
                    "ipv4": {"address": w["subnet"] + ".1", "prefix": 24},
                },
            }
        ],
        "pools": [{"name": w["pool"], "state": "active", "spec": {"type": "dir", "path": w["pool_path"]}}],
        "volumes": [{"pool": w["pool"], "name": g + ".qcow2", "capacity": "16M", "format": "qcow2"} for g in guests],
        "domains": [guest(w, g, state="running" if i == 0 else "present") for i, g in enumerate(guests)],
    }
    out.update(kw)
    return out


def by_name(r):
    return dict((e["name"], e) for e in r["results"])


def play(host, *tasks):
    return [{"hosts": host, "gather_facts": False, "tasks": list(tasks)}]


def test_creates_the_host_then_changes_nothing_in_every_mode(lab, world):
    hv1 = lab.hosts[0]
    args = host_args(world, lock={"required": True})
    r = lab.module(hv1, MODULE, args, check=True, diff=True)
    assert r["changed"] and not r.get("failed"), r
    assert r["summary"]["created"] == 1 + 1 + 3 + 3, r["summary"]
    assert lab.domain_state(hv1, world["guests"][0]) is None
    assert lab.virsh(hv1, "net-info", world["net"], check=False).returncode != 0

    r = lab.module(hv1, MODULE, args)
    assert not r.get("failed"), r.get("msg")
    kinds = [e["kind"] for e in r["results"]]
    assert kinds == ["network", "pool", "volume", "volume", "volume", "domain", "domain", "domain"]
    assert r["summary"] == {"created": 8, "changed": 0, "unchanged": 0, "removed": 0, "failed": 0, "skipped": 0}
    first = by_name(r)[world["guests"][0]]
    assert first["actions"] == ["define", "start"]
    # the lease-checked start: created paused, leases taken and verified, then running
    names = [c["name"] for c in first["lock_checkpoints"]]
    assert names.index("created_paused") < names.index("resumed") < names.index("leases_verified"), names
    assert lab.domain_state(hv1, world["guests"][0]) == "running"
    assert lab.domain_state(hv1, world["guests"][1]) == "shut off"
    disk = lab.virsh(hv1, "vol-path", world["guests"][0] + ".qcow2", "--pool", world["pool"]).stdout.strip()
    assert lock_holder(disk_lease(lab, disk)) == lab.virtlockd_pid(hv1)

    modes = [("normal", {}), ("check", {"check_mode": True}), ("diff", {"diff": True})]
    modes.append(("check+diff", {"check_mode": True, "diff": True}))
    run = lab.playbook(play(hv1, *[dict({"name": mode, MODULE: args}, **kw) for mode, kw in modes]))
    assert run.rc == 0, run.stdout[-3000:]
    for mode, _kw in modes:
        again = run.task(mode, hv1)
        assert again["changed"] is False, (mode, [e for e in again["results"] if e["changed"]])
        assert again["summary"]["unchanged"] == 8, (mode, again["summary"])
        for e in again["results"]:
            assert e["actions"] == [] and not e.get("pending_restart"), (mode, e)
            if "diff" in mode:
                assert e["diff"]["before"] == e["diff"]["after"], (mode, e)
            else:
                assert "diff" not in e, (mode, e)


def others_on(lab, host, w):
    """Every guest and network on ``host`` that is not this test's (a user's, the demo's), with its state and
    definition: prune must leave each exactly as it was."""
    ours = set(w["guests"]) | {w["net"]}
    out = {}
    for name in lab.virsh(host, "list", "--all", "--name").stdout.split():
        if name not in ours:
            xml = lab.virsh(host, "dumpxml", "--inactive", name).stdout
            out["domain " + name] = (lab.domain_state(host, name), hashlib.sha256(xml.encode()).hexdigest())
    for name in lab.virsh(host, "net-list", "--all", "--name").stdout.split():
        if name not in ours:
            info = lab.virsh(host, "net-info", name).stdout
            xml = lab.virsh(host, "net-dumpxml", "--inactive", name).stdout
            out["network " + name] = (info, hashlib.sha256(xml.encode()).hexdigest())
    return out


def test_prune_removes_only_marked_guests(lab, world):
    hv1 = lab.hosts[0]
    r = lab.module(hv1, MODULE, host_args(world))
    assert not r.get("failed"), r.get("msg")
    # a guest defined outside the collection, without its mark
    unmarked = world["guests"][0][:-2] + "-x"
    xml = (
        "<domain type='qemu'><name>{}</name><memory unit='MiB'>32</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>".format(unmarked)
    )
    lab.exec(hv1, "sh", "-c", "cat > /tmp/{0}.xml && virsh -q define /tmp/{0}.xml".format(unmarked), input=xml)
    # a guest and a network the collection defined (marked) under names that are not this test's
    foreign = world["foreign"]
    made = lab.module(hv1, "lockstep.virt.domain", {"name": foreign, "state": "present", "spec": {"memory": 32}})
    assert made["changed"] and not made.get("failed"), made
    made = lab.module(
        hv1,
        "lockstep.virt.network",
        {"name": foreign, "state": "present", "spec": {"forward": "isolated", "bridge": "itfb" + foreign[4:]}},
    )
    assert made["changed"] and not made.get("failed"), made
    others = others_on(lab, hv1, world)
    assert "domain " + foreign in others and "network " + foreign in others, others

    keep = world["guests"][:1]
    args = host_args(world, guests=keep, prune=True)
    args["volumes"] = []  # the volumes of the pruned guests stay (volumes are never pruned)
    # unscoped, prune would take every marked object nobody listed - the foreign ones too (check mode only)
    r = lab.module(hv1, MODULE, args, check=True)
    unscoped = set(e["name"] for e in r["results"] if e.get("pruned"))
    assert set(world["guests"][1:]) | {foreign} <= unscoped, r["results"]
    assert unmarked not in unscoped

    args["prune_pattern"] = world["pattern"]
    r = lab.module(hv1, MODULE, args, check=True)
    assert sorted(e["name"] for e in r["results"] if e.get("pruned")) == sorted(world["guests"][1:]), r["results"]
    assert lab.domain_state(hv1, world["guests"][1]) == "shut off"
    assert others_on(lab, hv1, world) == others

    r = lab.module(hv1, MODULE, args)
    assert not r.get("failed"), r.get("msg")
    assert r["summary"]["removed"] == 2 and r["summary"]["unchanged"] == 3, r["summary"]
    assert sorted(e["name"] for e in r["results"] if e.get("pruned")) == sorted(world["guests"][1:]), r["results"]
    assert lab.domain_state(hv1, world["guests"][0]) == "running"
    assert lab.domain_state(hv1, world["guests"][1]) is None and lab.domain_state(hv1, world["guests"][2]) is None
    assert lab.domain_state(hv1, unmarked) == "shut off"
    # prune's effect on every object that is not this test's: none (the foreign marked ones included)
    assert others_on(lab, hv1, world) == others
    assert (
        lab.virsh(hv1, "vol-info", world["guests"][1] + ".qcow2", "--pool", world["pool"], check=False).returncode == 0
    )
    assert lab.module(hv1, MODULE, args)["changed"] is False


def test_one_failing_object_does_not_hide_the_others(lab, world):
    hv1 = lab.hosts[0]
    args = host_args(world)
    # the second guest names a volume that does not exist and nothing creates: it fails, nothing else does
    args["domains"][1]["spec"]["disks"] = [{"pool": world["pool"], "volume": "missing.qcow2"}]
    # the third guest's volume is imported from a file that is not there: it fails, the guest using it is skipped
    args["volumes"][2] = {
        "pool": world["pool"],
        "name": world["guests"][2] + ".qcow2",
        "import_from": "/nonexistent.img",
    }
    r = lab.module(hv1, MODULE, args)
    assert r.get("failed") is True, r
    out = by_name(r)
    g0, g1, g2 = world["guests"]
    assert out[g0]["outcome"] == "created" and lab.domain_state(hv1, g0) == "running"
    assert out[g1]["outcome"] == "failed" and "missing.qcow2" in out[g1]["msg"]
    assert out[g2 + ".qcow2"]["outcome"] == "failed"
    assert out[g2]["outcome"] == "skipped" and g2 + ".qcow2" in out[g2]["msg"]
    assert lab.domain_state(hv1, g1) is None and lab.domain_state(hv1, g2) is None
    assert r["summary"]["failed"] == 2 and r["summary"]["skipped"] == 1 and r["summary"]["created"] == 5
    assert "3 of 8 objects did not reach their state" in r["msg"] and "domain {}".format(g1) in r["msg"]


def test_bad_input_changes_nothing(lab, world):
    hv1 = lab.hosts[0]
    args = host_args(world)
    args["domains"].append({"name": world["guests"][0], "spec": {"memory": 32}})
    r = lab.module_fails(hv1, MODULE, args)
    assert r["msg"].startswith("nothing was changed: ") and "is listed twice" in r["msg"], r["msg"]
    assert lab.virsh(hv1, "net-info", world["net"], check=False).returncode != 0
    assert lab.virsh(hv1, "pool-info", world["pool"], check=False).returncode != 0
