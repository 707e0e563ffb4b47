"""The EXAMPLES of secret, secret_info, snapshot and snapshot_info, read from the module files and run as
pasted on hv1 (the snapshot examples act on guest web1, made here the way domain's EXAMPLES make it, under a
name of this run's own)."""

import importlib.util
import os
import sys

import yaml
from labkit import COLLECTIONS, REPO

HV1 = "hv1"


def examples(name):
    if COLLECTIONS not in sys.path:
        sys.path.insert(0, COLLECTIONS)
    path = os.path.join(REPO, "plugins", "modules", name + ".py")
    spec = importlib.util.spec_from_file_location("lockstep_virt_" + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return yaml.safe_load(module.EXAMPLES)


def run(lab, tasks):
    play = [{"hosts": HV1, "gather_facts": False, "tasks": tasks}]
    out = lab.playbook(play)
    assert out.rc == 0, out.stdout[-4000:]
    assert [r["task"] for r in out.results] == [t["name"] for t in tasks]
    return out


def secret_uuids(lab):
    return [line.split()[0] for line in lab.virsh(HV1, "secret-list").stdout.splitlines() if line.strip()]


def rename(value, old, new):
    """``value`` (the EXAMPLES, a task name) with ``old`` written as ``new`` everywhere."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return dict((rename(k, old, new), rename(v, old, new)) for k, v in value.items())
    if isinstance(value, list):
        return [rename(v, old, new) for v in value]
    return value


def test_secret_examples(lab):
    """The secret examples under usage names of this run's own (a user's client.libvirt secret stays as it is)."""
    tag = os.urandom(3).hex()
    pasted = rename(examples("secret"), "client.libvirt secret", "client.libvirt-{} secret".format(tag))
    pasted = rename(pasted, "vault.luks", "vault-{}.luks".format(tag))
    before = set(secret_uuids(lab))
    try:
        out = run(lab, pasted + examples("secret_info"))
        ceph = out.task("The key of the Ceph user libvirt uses for rbd pools", HV1)
        assert ceph["changed"] and ceph["secret"]["usage"] == "ceph", ceph
        assert out.task("Remove it", HV1)["actions"] == ["undefine"]
        listed = out.task("Every secret of the host", HV1)["secrets"]
        assert ceph["secret"]["uuid"] in [s["uuid"] for s in listed]
    finally:
        for uid in set(secret_uuids(lab)) - before:
            lab.virsh(HV1, "secret-undefine", uid, check=False)


def test_snapshot_examples(lab):
    """The snapshot examples act on guest web1: here a guest of this run's own (a user's web1 is left alone)."""
    web1 = "ex" + os.urandom(3).hex() + "-web1"
    image = lab.new_disk(web1)
    try:
        guest = {
            "name": "A guest to snapshot",
            "lockstep.virt.domain": {
                "name": web1,
                "state": "running",
                "spec": {"type": "qemu", "memory": 32, "boot": ["hd"], "disks": [{"path": image, "format": "qcow2"}]},
            },
        }
        pasted = examples("snapshot")[:2] + examples("snapshot_info") + examples("snapshot")[2:]
        out = run(lab, [guest] + rename(pasted, "web1", web1))
        made = out.task("A snapshot before an upgrade, keeping the last three", HV1)
        assert made["actions"] == ["create"] and made["snapshot"]["name"] == "before-upgrade-today", made
        listed = out.task("The snapshots of " + web1, HV1)
        assert [s["name"] for s in listed["snapshots"]] == ["before-upgrade-today"]
        assert out.task("Delete it", HV1)["actions"] == ["delete"]
    finally:
        lab.virsh(HV1, "destroy", web1, check=False)
        lab.virsh(HV1, "undefine", "--snapshots-metadata", web1, check=False)
        os.unlink(image)
