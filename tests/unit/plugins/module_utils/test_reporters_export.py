"""reporters/export.py: definitions read back as specs, secrets taken out, name filters."""

import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.reporters.export import (
    NoSpec,
    domain_spec,
    drop_secrets,
    names_filter,
    network_spec,
    pool_spec,
    selected,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.network import build_network_xml
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.pool import build_pool_xml
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import compare, parse_xml, to_text


def test_every_password_and_cookie_is_dropped_and_named():
    root = parse_xml(
        "<domain><devices><graphics type='vnc' passwd='a1'/><graphics type='spice' Password='a2'/>"
        "<disk><source><cookies><cookie name='c'>a3</cookie></cookies></source></disk>"
        "<x><passwd>a4</passwd></x></devices></domain>"
    )
    dropped = drop_secrets(root)
    assert dropped == [
        "/domain/devices/graphics/@passwd",
        "/domain/devices/graphics/@Password",
        "/domain/devices/disk/source/cookies",
        "/domain/devices/x/passwd",
    ]
    text = to_text(root)
    assert not any(s in text for s in ("a1", "a2", "a3", "a4")), text


@pytest.mark.parametrize(
    "bridge, forward, kept",
    [("virbr3", "nat", False), ("lab0", "nat", True), ("virbr3", "bridge", True)],
)
def test_a_bridge_name_libvirt_picked_is_left_to_the_host(bridge, forward, kept):
    fwd = "<forward mode='{}'/>".format(forward)
    root = parse_xml("<network><name>n</name>{}<bridge name='{}' stp='on' delay='0'/></network>".format(fwd, bridge))
    spec = network_spec(root)
    assert ("bridge" in spec) is kept and spec["forward"] == forward


def test_a_network_spec_rebuilds_its_definition():
    text = (
        "<network><name>n</name><uuid>dd8fe884-6c02-601e-7551-cca97df1c5df</uuid><forward mode='route'/>"
        "<bridge name='lab1' stp='on' delay='0'/><mac address='52:54:00:aa:bb:cc'/><domain name='lab'/>"
        "<dns><host ip='10.1.0.5'><hostname>web</hostname></host></dns>"
        "<ip address='10.1.0.1' prefix='24'><dhcp><range start='10.1.0.10' end='10.1.0.20'/>"
        "<host mac='52:54:00:00:00:01' ip='10.1.0.5'/></dhcp></ip></network>"
    )
    root = parse_xml(text)
    built = build_network_xml("n", network_spec(root))
    built.remove(built.find("metadata"))
    assert not compare(built, root).changed


def test_a_pool_spec_rebuilds_its_definition():
    root = parse_xml(
        "<pool type='netfs'><name>p</name><capacity unit='bytes'>1</capacity><source><host name='nfs1' port='2049'/>"
        "<dir path='/export'/><format type='nfs'/></source><target><path>/mnt/p</path><permissions>"
        "<mode>0750</mode><owner>107</owner></permissions></target></pool>"
    )
    spec = pool_spec(root)
    assert spec["source"] == {"hosts": ["nfs1:2049"], "dir": "/export", "format": "nfs"}
    assert spec["permissions"] == {"mode": "0750", "owner": 107}
    assert not compare(build_pool_xml("p", spec), root).changed


@pytest.mark.parametrize(
    "extra, named",
    [
        ("<devices><rng model='virtio'><backend model='random'>/dev/urandom</backend></rng></devices>", "rng"),
        ("<pm><suspend-to-mem enabled='no'/></pm>", "/domain/pm"),
        ("<devices><interface type='direct'><source dev='eth0'/></interface></devices>", "interface type direct"),
        ("<features><hyperv/><vmport state='off'/></features>", "vmport/@state"),
    ],
)
def test_what_a_domain_spec_cannot_express_is_named(extra, named):
    text = "<domain type='kvm'><name>d</name><memory>32768</memory><os><type>hvm</type></os>{}</domain>"
    with pytest.raises(NoSpec, match=named.replace("(", r"\(")):
        domain_spec(parse_xml(text.format(extra)))


def test_names_filter():
    assert names_filter(None)["domains"] is None
    every = names_filter(["web-*"])
    assert all(v == ["web-*"] for v in every.values())
    per_kind = names_filter({"domains": "db1"})
    assert per_kind["domains"] == ["db1"] and per_kind["networks"] is None
    assert selected(["web-*"], "web-1") and not selected(["web-*"], "db-1") and not selected([], "x")
    with pytest.raises(ValidationError, match="unknown kinds guests"):
        names_filter({"guests": ["a"]})
