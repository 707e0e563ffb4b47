"""A domain definition naming a storage pool, volume or network the host lacks fails before anything
changes, in normal and check mode (test:///default has the network ``default`` and the pool
``default-pool``)."""

import libvirt
import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.references import domain_references
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import parse_xml
from ansible_collections.lockstep.virt.plugins.modules import domain as domain_module

URI = "test:///default"
BASE = {"memory": 32, "vcpus": 1, "boot": ["hd"], "interfaces": [{"network": "default"}]}

MISSING = [
    ({"disks": [{"pool": "no-such-pool", "volume": "v.img"}]}, "storage pool no-such-pool"),
    ({"disks": [{"pool": "default-pool", "volume": "no-such.img"}]}, "volume no-such.img in storage pool default-pool"),
    ({"interfaces": [{"network": "no-such-net"}]}, "network no-such-net"),
]


def run(run_module, args, **kw):
    return run_module(domain_module.main, dict({"uri": URI, "name": "r1"}, **args), **kw)


def test_domain_references_reads_volume_disks_and_network_interfaces():
    root = parse_xml(
        "<domain><devices>"
        "<disk type='volume'><source pool='p' volume='a'/></disk>"
        "<disk type='volume'><source pool='p' volume='a'/></disk>"
        "<disk type='file'><source file='/x'/></disk>"
        "<interface type='network'><source network='n'/></interface>"
        "<interface type='bridge'><source bridge='br0'/></interface>"
        "</devices></domain>",
        "domain",
        "xml",
    )
    assert domain_references(root) == {"pools": {"p": ["a"]}, "networks": ["n"]}


@pytest.mark.parametrize("check_mode", [False, True])
@pytest.mark.parametrize("override,message", MISSING, ids=[m for _o, m in MISSING])
def test_running_guest_is_not_redefined_with_a_missing_reference(hv, run_module, override, message, check_mode):
    assert run(run_module, {"spec": BASE, "state": "running"})["changed"] is True
    before = hv.lookupByName("r1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    res = run(run_module, {"spec": dict(BASE, **override), "state": "running"}, check_mode=check_mode)
    assert res["failed"] is True, res
    assert message in res["msg"] and "nothing was changed" in res["msg"], res["msg"]
    assert not res.get("pending_restart")
    assert hv.lookupByName("r1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
    assert hv.lookupByName("r1").isActive()


@pytest.mark.parametrize("check_mode", [False, True])
def test_new_guest_with_a_missing_network_is_not_defined(hv, run_module, check_mode):
    res = run(run_module, {"spec": dict(BASE, interfaces=[{"network": "gone"}])}, check_mode=check_mode)
    assert res["failed"] is True and "network gone" in res["msg"]
    assert "r1" not in [d.name() for d in hv.listAllDomains()]


def test_existing_volume_is_accepted(hv, run_module):
    hv.storagePoolLookupByName("default-pool").createXML(
        "<volume><name>ok.img</name><capacity unit='MiB'>1</capacity></volume>"
    )
    res = run(run_module, {"spec": dict(BASE, disks=[{"pool": "default-pool", "volume": "ok.img"}])})
    assert res["changed"] is True and res["actions"] == ["define"]
