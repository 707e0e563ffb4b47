"""The network and network_info modules, run in-process against libvirt's test:///default driver."""

import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.network import network_drift
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.network import (
    build_network_xml,
    normalize_network_spec,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import parse_xml
from ansible_collections.lockstep.virt.plugins.modules import network as network_module
from ansible_collections.lockstep.virt.plugins.modules import network_info as info_module

URI = "test:///default"

SPEC = {
    "forward": "nat",
    "bridge": "ut0",
    "mtu": 1400,
    "domain": "unit.test",
    "ipv4": {
        "address": "10.78.90.1",
        "prefix": 24,
        "dhcp_range": {"start": "10.78.90.100", "end": "10.78.90.199"},
        "dhcp_hosts": [{"mac": "52:54:00:00:90:01", "name": "h1", "ip": "10.78.90.10"}],
    },
    "dns_hosts": [{"ip": "10.78.90.10", "hostnames": ["h1", "www"]}],
}


def net_args(**kw):
    args = {"uri": URI, "name": "n1", "spec": SPEC}
    args.update(kw)
    return args


def with_hosts(hosts=None, dns=None, **changes):
    spec = dict(SPEC, **changes)
    spec["ipv4"] = dict(SPEC["ipv4"], dhcp_hosts=hosts if hosts is not None else SPEC["ipv4"]["dhcp_hosts"])
    if dns is not None:
        spec["dns_hosts"] = dns
    return spec


def xml_of(hv, name="n1"):
    return hv.networkLookupByName(name).XMLDesc(0)


# --------------------------------------------------------------------------- spec
def test_spec_builds_xml_with_mark():
    root = build_network_xml("n1", SPEC)
    text = network_drift(root, None).after
    assert '<forward mode="nat"/>' in text
    assert "lsv:managed" in text
    assert 'mac="52:54:00:00:90:01"' in text


@pytest.mark.parametrize(
    "spec,needle",
    [
        ({"bogus": 1}, "unsupported keys"),
        ({"ipv4": {"address": "10.78.90.1", "prefix": 40}}, "prefix"),
        ({"ipv4": {"address": "nope", "prefix": 24}}, "not an IP address"),
        (
            {"ipv4": {"address": "10.78.90.1", "prefix": 24, "dhcp_range": {"start": "10.1.1.1", "end": "10.1.1.2"}}},
            "inside",
        ),
        ({"ipv4": {"address": "10.78.90.1", "prefix": 24, "dhcp_hosts": [{"ip": "10.78.90.5"}]}}, "mac is required"),
        ({"ipv4": {"address": "10.78.90.1", "prefix": 24, "dhcp_hosts": [{"mac": "zz", "ip": "10.78.90.5"}]}}, "MAC"),
        ({"forward": "bridge"}, "bridge"),
        ({"forward": "bridge", "bridge": "br0", "ipv4": {"address": "10.78.90.1", "prefix": 24}}, "no ipv4"),
        ({"mtu": 10}, "mtu"),
        ({"bridge": "a-very-long-bridge-name"}, "bridge"),
        ({"dns_hosts": [{"ip": "10.0.0.1", "hostnames": ["bad name"]}]}, "host name"),
    ],
)
def test_bad_spec_is_refused(spec, needle):
    with pytest.raises(ValidationError) as exc:
        normalize_network_spec(spec)
    assert needle in exc.value.msg


def test_drift_ignores_what_libvirt_adds_and_sees_set_changes():
    desired = build_network_xml("n1", SPEC)
    actual = parse_xml(
        """<network><name>n1</name><uuid>5507a403-5a84-4216-992f-9547a7f7e54c</uuid>
        <metadata><lsv:managed xmlns:lsv="https://lockstep.virt/ns/managed/1"
          by="lockstep.virt" kind="network"/></metadata>
        <forward mode='nat'><nat><port start='1024' end='65535'/></nat></forward>
        <bridge name='ut0' stp='on' delay='0'/><mtu size='1400'/><mac address='52:54:00:d5:60:b2'/>
        <domain name='unit.test'/>
        <dns><host ip='10.78.90.10'><hostname>h1</hostname><hostname>www</hostname></host></dns>
        <ip address='10.78.90.1' prefix='24'><dhcp><range start='10.78.90.100' end='10.78.90.199'/>
        <host mac='52:54:00:00:90:01' name='h1' ip='10.78.90.10'/></dhcp></ip></network>"""
    )
    assert not network_drift(desired, actual).changed
    more = build_network_xml(
        "n1", with_hosts(hosts=SPEC["ipv4"]["dhcp_hosts"] + [{"mac": "52:54:00:00:90:02", "ip": "10.78.90.11"}])
    )
    drift = network_drift(more, actual)
    assert drift.changed and not drift.rest_changed
    assert [op[0] for op in drift.host_ops] == ["add"]
    isolated = build_network_xml("n1", dict(SPEC, forward="isolated"))
    drift = network_drift(isolated, actual)
    assert drift.rest_changed
    assert any("forward" in d for d in drift.differences)
    no_dns = build_network_xml("n1", with_hosts(dns=[]))
    drift = network_drift(no_dns, actual)
    assert not drift.rest_changed and [op[:2] for op in drift.host_ops] == [("delete", "dns_host")]


# --------------------------------------------------------------------------- module
def test_create_idempotent_in_all_modes(hv, run_module):
    r = run_module(network_module.main, net_args(state="active"), check_mode=True, diff=True)
    assert r["changed"] and r["actions"] == ["define", "start"]
    assert "10.78.90.1" in r["diff"]["after"] and r["diff"]["before"].startswith("state: absent")
    assert "n1" not in hv.listNetworks() + hv.listDefinedNetworks()
    r = run_module(network_module.main, net_args(state="active", autostart=True), diff=True)
    assert r["changed"] and r["actions"] == ["define", "autostart", "start"]
    assert r["network"]["active"] and r["network"]["autostart"]
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = run_module(network_module.main, net_args(state="active", autostart=True), check_mode=check, diff=diff)
        assert not r["changed"], (check, diff, r)
        assert r["actions"] == [] and not r["pending_restart"]
    assert "lsv:managed" in xml_of(hv)


def test_static_host_change_is_a_live_update(hv, run_module):
    run_module(network_module.main, net_args(state="active"))
    hosts = SPEC["ipv4"]["dhcp_hosts"] + [{"mac": "52:54:00:00:90:02", "name": "h2", "ip": "10.78.90.11"}]
    args = net_args(state="active", spec=with_hosts(hosts=hosts, dns=[{"ip": "10.78.90.11", "hostnames": ["h2"]}]))
    r = run_module(network_module.main, args, check_mode=True, diff=True)
    assert r["changed"] and r["actions"] == ["update_hosts"]
    assert "52:54:00:00:90:02" not in xml_of(hv)
    r = run_module(network_module.main, args, diff=True)
    assert r["actions"] == ["update_hosts"] and not r["pending_restart"]
    assert sorted((u["command"], u["section"]) for u in r["host_updates"]) == [
        ("add", "dhcp_host"),
        ("add", "dns_host"),
        ("delete", "dns_host"),
    ]
    text = xml_of(hv)
    assert "52:54:00:00:90:02" in text and "<hostname>www</hostname>" not in text
    assert hv.networkLookupByName("n1").isActive()
    assert not run_module(network_module.main, args)["changed"]


def test_other_change_redefines_an_inactive_network(hv, run_module):
    run_module(network_module.main, net_args(state="inactive"))
    args = net_args(state="inactive", spec=dict(SPEC, forward="route", mtu=1500))
    r = run_module(network_module.main, args, check_mode=True)
    assert r["actions"] == ["redefine"]
    r = run_module(network_module.main, args, diff=True)
    assert r["actions"] == ["redefine"] and "/network/forward/@mode" in r["differences"]
    assert "mode='route'" in xml_of(hv)
    assert not run_module(network_module.main, args)["changed"]


def test_xml_input_and_hostile_xml(hv, run_module):
    xml = "<network><name>n2</name><bridge name='ut2'/><ip address='10.78.91.1' prefix='24'/></network>"
    r = run_module(network_module.main, {"uri": URI, "name": "n2", "xml": xml, "state": "active"})
    assert r["changed"]
    assert not run_module(network_module.main, {"uri": URI, "name": "n2", "xml": xml, "state": "active"})["changed"]
    hostile = '<!DOCTYPE n [<!ENTITY x SYSTEM "file:///etc/passwd">]><network><name>n2</name>&x;</network>'
    for bad, needle in (
        (hostile, "external entity"),
        ("<network><name>n2</name>", "not well-formed"),
        ("<pool><name>n2</name></pool>", "<network> root"),
        ("<network><name>other</name></network>", "differs from name"),
    ):
        r = run_module(network_module.main, {"uri": URI, "name": "n2", "xml": bad, "state": "active"})
        assert r["failed"] and needle in r["msg"], r
        assert not r["changed"]
    r = run_module(network_module.main, {"uri": URI, "name": "n2", "spec": {"forward": "nat", "colour": "red"}})
    assert r["failed"] and "colour" in r["msg"]
    assert "ut2" in xml_of(hv, "n2")


def test_missing_without_definition_fails(hv, run_module):
    r = run_module(network_module.main, {"uri": URI, "name": "nope", "state": "active"})
    assert r["failed"] and "give xml or spec" in r["msg"]


def test_absent_idempotent(hv, run_module):
    run_module(network_module.main, net_args(state="active"))
    r = run_module(network_module.main, net_args(state="absent"), check_mode=True, diff=True)
    assert r["actions"] == ["stop", "undefine"] and r["diff"]["after"] == ""
    assert "n1" in hv.listNetworks()
    r = run_module(network_module.main, net_args(state="absent"))
    assert r["changed"] and "n1" not in hv.listNetworks() + hv.listDefinedNetworks()
    for check in (False, True):
        assert not run_module(network_module.main, {"uri": URI, "name": "n1", "state": "absent"}, check_mode=check)[
            "changed"
        ]


def test_info(hv, run_module):
    run_module(network_module.main, net_args(state="active"))
    r = run_module(info_module.main, {"uri": URI, "name": "n1"}, check_mode=True)
    assert not r["changed"]
    (n,) = r["networks"]
    assert n["forward_mode"] == "nat" and n["bridge"] == "ut0" and n["active"] and n["managed"]
    assert n["addresses"][0]["prefix"] == 24
    assert n["addresses"][0]["dhcp_hosts"][0]["ip"] == "10.78.90.10"
    assert n["dns_hosts"] == [{"ip": "10.78.90.10", "hostnames": ["h1", "www"]}]
    names = [x["name"] for x in run_module(info_module.main, {"uri": URI})["networks"]]
    assert names == ["default", "n1"]
    assert run_module(info_module.main, {"uri": URI, "name": "zz"})["networks"] == []
