"""lockstep.virt.export on the lab: hv1's network, pool, volume and guests exported, applied back to hv1 (no
change in any mode) and to hv2, which has none of them (all created, then no change)."""

import json
import os
import random
import uuid

import pytest
from labkit import define, tiny_domain_xml
from test_xml_corpus import _virt_install

EXPORT = "lockstep.virt.export"
APPLY = "lockstep.virt.apply"
PASSWORD = "x" + uuid.uuid4().hex[:7]  # VNC takes 8 characters at most


@pytest.fixture
def objects(lab):
    """Fresh names for a network, a dir pool (each host's own /var/lib/libvirt), a volume and two guests;
    everything removed from both hosts afterwards."""
    suffix = uuid.uuid4().hex[:6]
    o = {
        "net": "ite-" + suffix,
        "bridge": "iteb" + suffix,
        "subnet": "10.79.{}".format(random.randint(20, 249)),
        "pool": "ite-" + suffix,
        "pool_path": "/var/lib/libvirt/images/ite-" + suffix,
        "volume": "ite-{}-1.qcow2".format(suffix),
        "spec_guest": "ite-{}-1".format(suffix),
        "xml_guest": "ite-{}-raw".format(suffix),
    }
    yield o
    for name in (o["spec_guest"], o["xml_guest"]):
        lab.cleanup_domain(name)
    for host in lab.hosts[:2]:
        lab.virsh(host, "vol-delete", o["volume"], "--pool", o["pool"], check=False)
        lab.virsh(host, "pool-destroy", o["pool"], check=False)
        lab.virsh(host, "pool-undefine", o["pool"], check=False)
        lab.exec(host, "rm", "-rf", o["pool_path"], check=False)
        lab.virsh(host, "net-destroy", o["net"], check=False)
        lab.virsh(host, "net-undefine", o["net"], check=False)


def made_on_hv1(o):
    """The network, pool, volume and spec guest, made the way the collection's users make them."""
    return {
        "networks": [
            {
                "name": o["net"],
                "state": "active",
                "autostart": True,
                "spec": {
                    "forward": "nat",
                    "bridge": o["bridge"],
                    "ipv4": {
                        "address": o["subnet"] + ".1",
                        "prefix": 24,
                        "dhcp_range": {"start": o["subnet"] + ".100", "end": o["subnet"] + ".200"},
                    },
                },
            }
        ],
        "pools": [{"name": o["pool"], "state": "active", "spec": {"type": "dir", "path": o["pool_path"]}}],
        "volumes": [{"pool": o["pool"], "name": o["volume"], "capacity": "16M", "format": "qcow2"}],
        "domains": [
            {
                # shut off: its disk's lease is the same file on every host (the lockspace is shared), so a
                # copy running on hv2 too would be refused - rightly
                "name": o["spec_guest"],
                "state": "present",
                "spec": {
                    "type": "qemu",
                    "memory": 32,
                    "boot": ["hd"],
                    "disks": [{"pool": o["pool"], "volume": o["volume"], "format": "qcow2"}],
                    "interfaces": [{"network": o["net"]}],
                },
            }
        ],
    }


def raw_guest_xml(name):
    """A running diskless guest from XML the spec cannot express (<pm>), with a console password."""
    xml = tiny_domain_xml(name)
    xml = xml.replace(
        "<graphics type='vnc' listen='127.0.0.1'/>",
        "<graphics type='vnc' listen='127.0.0.1' passwd='{}'/>".format(PASSWORD),
    )
    return xml.replace("<on_poweroff>", "<pm><suspend-to-mem enabled='no'/></pm><on_poweroff>")


def by_name(result):
    return dict((e["name"], e) for e in result["results"])


def test_export_applied_to_its_own_host_and_to_an_empty_one(lab, objects):
    hv1, hv2 = lab.hosts[0], lab.hosts[1]
    o = objects
    made = lab.module(hv1, APPLY, made_on_hv1(o))
    assert made.get("changed") and not made.get("failed"), made
    define(lab, hv1, raw_guest_xml(o["xml_guest"]))
    lab.virsh(hv1, "start", o["xml_guest"])
    names = {
        "networks": [o["net"]],
        "pools": [o["pool"]],
        "volumes": [o["volume"]],
        "domains": [o["spec_guest"], o["xml_guest"]],
    }

    exported = lab.module(hv1, EXPORT, {"names": names})
    assert not exported.get("failed") and exported["changed"] is False, exported
    assert PASSWORD not in json.dumps(exported)
    sources = dict(((e["kind"], e["name"]), e["source"]) for e in exported["objects"])
    assert sources == {
        ("network", o["net"]): "spec",
        ("pool", o["pool"]): "spec",
        ("volume", o["volume"]): "options",
        ("domain", o["spec_guest"]): "spec",
        ("domain", o["xml_guest"]): "xml",
    }, exported["objects"]
    raw = [e for e in exported["objects"] if e["name"] == o["xml_guest"]][0]
    assert "/domain/pm" in raw["reason"], raw
    assert any(o["xml_guest"] in w and "passwd" in w for w in exported["warnings"]), exported["warnings"]
    options = exported["apply"]
    states = dict((d["name"], d["state"]) for d in options["domains"])
    assert states == {o["spec_guest"]: "shutdown", o["xml_guest"]: "running"}
    assert options["volumes"] == [{"pool": o["pool"], "name": o["volume"], "capacity": 16 * 2**20, "format": "qcow2"}]

    # the same host: nothing to change, in every mode
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        again = lab.module(hv1, APPLY, options, check=check, diff=diff)
        assert not again.get("failed") and again["changed"] is False, (check, diff, again)
        assert again["summary"]["unchanged"] == 5, again["summary"]

    # a host that has none of them: all created as they are on hv1, then nothing to change
    assert lab.virsh(hv2, "dominfo", o["spec_guest"], check=False).returncode != 0
    created = lab.module(hv2, APPLY, options)
    assert not created.get("failed") and created["changed"] is True, created
    assert created["summary"]["created"] == 5, created["summary"]
    assert lab.domain_state(hv2, o["xml_guest"]) == "running"
    assert lab.domain_state(hv2, o["spec_guest"]) == "shut off"
    assert o["net"] in lab.virsh(hv2, "net-list", "--name").stdout.split()
    assert "yes" in lab.virsh(hv2, "net-info", o["net"]).stdout.split("Autostart:")[1].split("\n")[0]
    vol = lab.virsh(hv2, "vol-info", o["volume"], "--pool", o["pool"], "--bytes").stdout
    assert str(16 * 2**20) in vol
    uuid1 = lab.virsh(hv1, "domuuid", o["spec_guest"]).stdout.strip()
    assert lab.virsh(hv2, "domuuid", o["spec_guest"]).stdout.strip() == uuid1
    assert "passwd" not in lab.virsh(hv2, "dumpxml", "--security-info", o["xml_guest"]).stdout
    for check, diff in ((False, False), (True, True)):
        second = lab.module(hv2, APPLY, options, check=check, diff=diff)
        assert not second.get("failed") and second["changed"] is False, (check, diff, second)


# guests as virt-install writes them (tests/integration/test_xml_corpus.py), with no network to need elsewhere
VIRT_INSTALL = [
    ("debian", "--os-variant debian11 --memory 256 --disk path={disk},bus=virtio --network none"),
    ("alpine", "--os-variant alpinelinux3.17 --memory 256 --disk path={disk} --graphics none --console pty"),
    ("vncpw", "--os-variant win2k19 --memory 256 --disk path={disk},bus=sata --graphics vnc,password=" + PASSWORD),
    ("generic", "--os-variant generic --memory 128 --disk none --graphics none"),
]


@pytest.fixture
def written_by_virt_install(lab):
    prefix = "ite-" + uuid.uuid4().hex[:6] + "-"
    disk = lab.new_disk(prefix + "disk")
    names = []
    try:
        docs = []  # all written before any is defined: virt-install refuses a disk another guest uses
        for suffix, options in VIRT_INSTALL:
            if "--network" not in options:
                options += " --network none"
            res = _virt_install(lab, lab.hosts[0], prefix + suffix, options.format(disk=disk), lab.images_dir)
            assert res.returncode == 0, res.stderr
            docs.append((prefix + suffix, res.stdout))
        for name, xml in docs:
            define(lab, lab.hosts[0], xml)
            names.append(name)
        yield prefix, names
    finally:
        for name in names:
            lab.cleanup_domain(name)
        os.unlink(disk)


def test_guests_written_by_virt_install_round_trip(lab, written_by_virt_install):
    hv1, hv2 = lab.hosts[0], lab.hosts[1]
    prefix, names = written_by_virt_install
    exported = lab.module(hv1, EXPORT, {"include": ["domains"], "names": [prefix + "*"]})
    assert not exported.get("failed"), exported
    assert PASSWORD not in json.dumps(exported)
    assert sorted(d["name"] for d in exported["apply"]["domains"]) == sorted(names)
    assert all(o.get("unchanged", True) for o in exported["objects"]), exported["objects"]
    assert any(prefix + "vncpw" in w for w in exported["warnings"]), exported["warnings"]
    options = exported["apply"]
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        again = lab.module(hv1, APPLY, options, check=check, diff=diff)
        assert not again.get("failed") and again["changed"] is False, (check, diff, again)
    created = lab.module(hv2, APPLY, options)
    assert not created.get("failed") and created["summary"]["created"] == len(names), created
    for name in names:
        assert lab.domain_state(hv2, name) == "shut off"
    for check, diff in ((False, False), (True, True)):
        second = lab.module(hv2, APPLY, options, check=check, diff=diff)
        assert not second.get("failed") and second["changed"] is False, (check, diff, second)
