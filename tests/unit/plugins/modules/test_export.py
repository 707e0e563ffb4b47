"""The export module, run in-process against libvirt's test:///default driver, with apply run on its output."""

import json

import pytest

from ansible_collections.lockstep.virt.plugins.modules import apply as apply_module
from ansible_collections.lockstep.virt.plugins.modules import export as export_module

URI = "test:///default"
MODES = ((False, False), (True, False), (False, True), (True, True))


def export(run_module, **args):
    r = run_module(export_module.main, dict(args, uri=URI))
    assert not r.get("failed") and r["changed"] is False, r
    return r


def apply(run_module, options, check_mode=False, diff=False):
    r = run_module(apply_module.main, dict(options, uri=URI), check_mode=check_mode, diff=diff)
    assert not r.get("failed"), r
    return r


def sources(result):
    return dict(((o["kind"], o["name"]), o["source"]) for o in result["objects"])


def assert_unchanged_in_every_mode(run_module, options):
    for check_mode, diff in MODES:
        r = apply(run_module, options, check_mode=check_mode, diff=diff)
        assert r["changed"] is False, (check_mode, diff, r)
        assert all(e["outcome"] == "unchanged" for e in r["results"]), r


def test_the_default_host_applied_back_is_unchanged_and_recreated_when_gone(hv, run_module):
    r = export(run_module)
    assert sorted(r["apply"]) == ["domains", "networks", "pools", "volumes"]
    # the test driver's guest (type test) and network (a netmask) are beyond a spec; its pool is not
    assert sources(r) == {("network", "default"): "xml", ("pool", "default-pool"): "spec", ("domain", "test"): "xml"}
    reasons = dict((o["name"], o.get("reason")) for o in r["objects"])
    assert "domain type test" in reasons["test"] and "netmask" in reasons["default"]
    assert r["apply"]["pools"] == [
        {
            "name": "default-pool",
            "state": "active",
            "autostart": False,
            "spec": {"type": "dir", "path": "/default-pool"},
        }
    ]
    assert [(d["name"], d["state"]) for d in r["apply"]["domains"]] == [("test", "running")]
    assert r["skipped"] == [] and "warnings" not in r
    assert_unchanged_in_every_mode(run_module, r["apply"])

    # the objects gone: the same options bring them back, as they were
    dom = hv.lookupByName("test")
    before = dom.XMLDesc(0)
    dom.destroy()
    dom.undefine()
    hv.networkLookupByName("default").destroy()
    hv.networkLookupByName("default").undefine()
    hv.storagePoolLookupByName("default-pool").destroy()
    hv.storagePoolLookupByName("default-pool").undefine()
    again = apply(run_module, r["apply"])
    assert again["changed"] is True
    created = dict((e["name"], e["outcome"]) for e in again["results"])
    assert created == {"default": "created", "default-pool": "created", "test": "created"}
    assert hv.storagePoolLookupByName("default-pool").isActive()
    assert hv.lookupByName("test").isActive() and hv.networkLookupByName("default").isActive()
    assert hv.lookupByName("test").UUIDString() == "6695eb01-f6a4-8304-79aa-97f2502e193f"
    assert "aa:bb:cc:dd:ee:ff" in hv.lookupByName("test").XMLDesc(0) and "aa:bb:cc:dd:ee:ff" in before
    assert_unchanged_in_every_mode(run_module, r["apply"])


def objects_of_the_collection():
    return {
        "networks": [
            {
                "name": "ex-net",
                "state": "active",
                "autostart": True,
                "spec": {
                    "forward": "nat",
                    "ipv4": {
                        "address": "10.79.9.1",
                        "prefix": 24,
                        "dhcp_range": {"start": "10.79.9.100", "end": "10.79.9.200"},
                        "dhcp_hosts": [{"mac": "52:54:00:00:09:01", "ip": "10.79.9.10"}],
                    },
                    "dns_hosts": [{"ip": "10.79.9.10", "hostnames": ["web"]}],
                },
            }
        ],
        "volumes": [
            {"pool": "default-pool", "name": "ex-base.qcow2", "capacity": "16M", "format": "qcow2"},
            {"pool": "default-pool", "name": "ex-1.qcow2", "capacity": "32M", "backing_volume": "ex-base.qcow2"},
        ],
        "domains": [
            {
                "name": "ex-1",
                "state": "running",
                "autostart": True,
                "spec": {
                    "memory": 32,
                    "vcpus": 1,
                    "title": "web",
                    "metadata": {"team": "web"},
                    "disks": [{"pool": "default-pool", "volume": "ex-1.qcow2", "format": "qcow2"}],
                    "interfaces": [{"network": "ex-net", "mac": "52:54:00:00:09:01"}],
                    "graphics": {"type": "vnc", "listen": "127.0.0.1"},
                    "serial_console": True,
                    "guest_agent": True,
                },
            },
            {"name": "ex-2", "state": "shutdown", "spec": {"memory": 32, "boot": ["network"], "features": []}},
        ],
    }


def test_objects_made_from_a_spec_come_back_as_that_spec(hv, run_module):
    made = apply(run_module, objects_of_the_collection())
    assert made["changed"] is True
    r = export(run_module, names={"networks": ["ex-*"], "volumes": ["ex-*"], "domains": ["ex-*"], "pools": []})
    assert sources(r) == {
        ("network", "ex-net"): "spec",
        ("volume", "ex-base.qcow2"): "options",
        ("volume", "ex-1.qcow2"): "options",
        ("domain", "ex-1"): "spec",
        ("domain", "ex-2"): "spec",
    }, r["objects"]
    assert r["apply"]["pools"] == []
    assert [v["name"] for v in r["apply"]["volumes"]] == ["ex-base.qcow2", "ex-1.qcow2"]  # the backing one first
    assert r["apply"]["volumes"][1]["backing_volume"] == "ex-base.qcow2"
    ex1 = r["apply"]["domains"][0]
    assert (ex1["state"], ex1["autostart"], ex1["spec"]["title"], ex1["spec"]["metadata"]) == (
        "running",
        True,
        "web",
        {"team": "web"},
    )
    assert r["apply"]["domains"][1]["state"] == "shutdown"
    assert_unchanged_in_every_mode(run_module, r["apply"])

    # gone from the host: recreated from the export, then unchanged
    uuid = hv.lookupByName("ex-1").UUIDString()
    apply(run_module, {"domains": [{"name": n, "state": "absent"} for n in ("ex-1", "ex-2")]})
    pool = hv.storagePoolLookupByName("default-pool")
    for name in ("ex-1.qcow2", "ex-base.qcow2"):
        pool.storageVolLookupByName(name).delete(0)
    apply(run_module, {"networks": [{"name": "ex-net", "state": "absent"}]})
    again = apply(run_module, r["apply"])
    assert again["summary"]["created"] == 5, again
    assert hv.lookupByName("ex-1").UUIDString() == uuid and hv.lookupByName("ex-1").autostart()
    assert hv.lookupByName("ex-1").isActive() and not hv.lookupByName("ex-2").isActive()
    assert_unchanged_in_every_mode(run_module, r["apply"])


def test_prefer_xml_and_include(hv, run_module):
    apply(run_module, objects_of_the_collection())
    r = export(run_module, include=["domains"], names=["ex-1"], prefer="xml")
    assert sorted(r["apply"]) == ["domains"]
    assert sources(r) == {("domain", "ex-1"): "xml"}
    assert r["objects"][0]["reason"] == "prefer: xml"
    assert_unchanged_in_every_mode(run_module, r["apply"])


def test_a_console_password_is_never_exported(hv, run_module):
    hv.defineXML(
        "<domain type='test'><name>pw1</name><memory>32768</memory><os><type>hvm</type></os><devices>"
        "<graphics type='vnc' port='-1' autoport='yes' passwd='s3cr3t-pw'/></devices></domain>"
    )
    r = export(run_module, include=["domains"], names=["pw1"])
    assert "s3cr3t-pw" not in json.dumps(r)
    assert "passwd" not in r["apply"]["domains"][0]["xml"]
    assert "domain pw1: /domain/devices/graphics/@passwd left out of the export" in json.dumps(r["warnings"])
    assert_unchanged_in_every_mode(run_module, r["apply"])


def test_transient_objects_are_skipped_with_the_reason(hv, run_module):
    hv.createXML("<domain type='test'><name>tr1</name><memory>32768</memory><os><type>hvm</type></os></domain>", 0)
    r = export(run_module, include=["domains"])
    assert [d["name"] for d in r["apply"]["domains"]] == ["test"]
    assert r["skipped"] == [
        {"kind": "domain", "name": "tr1", "reason": "transient (it has no definition; apply would make it persistent)"}
    ]
    hv.lookupByName("tr1").destroy()


@pytest.mark.parametrize(
    "names, message",
    [
        ({"guests": ["a"]}, "names: unknown kinds guests"),
        ([1], "names must be a list of names or shell-style patterns"),
        ({"domains": {"a": 1}}, "names.domains must be a list"),
    ],
)
def test_bad_names_fail_cleanly(hv, run_module, names, message):
    r = run_module(export_module.main, {"uri": URI, "names": names})
    assert r["failed"] and message in r["msg"], r


def test_an_unmarked_object_is_adopted_as_it_is_and_marked_at_its_next_redefinition(hv, run_module):
    xml = "<domain type='test'><name>um1</name><memory>32768</memory><os><type>hvm</type></os></domain>"
    hv.defineXML(xml)
    r = apply(run_module, {"domains": [{"name": "um1", "xml": xml}]})
    assert r["changed"] is False and "lockstep.virt" not in hv.lookupByName("um1").XMLDesc(0)
    changed = xml.replace("<memory>32768</memory>", "<memory>65536</memory>")
    r = apply(run_module, {"domains": [{"name": "um1", "xml": changed}]})
    assert r["results"][0]["actions"] == ["redefine"]
    assert "https://lockstep.virt/ns/managed/1" in hv.lookupByName("um1").XMLDesc(0)
