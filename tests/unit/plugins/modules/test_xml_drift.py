"""Real-world XML stays unchanged on the second run: secrets libvirt only returns on request, the defaults
and paths libvirt normalises, the values it computes, and what this libvirt does not know - run through the
modules (and the manager) against libvirt's test:///default driver."""

import json

import libvirt
import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.lockstep.virt.plugins.module_utils._virt.connection import Connection
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import VirtError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.domain import (
    DOMAIN_ARGUMENT_SPEC,
    DomainManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import compare, parse_xml
from ansible_collections.lockstep.virt.plugins.modules import domain as domain_module
from ansible_collections.lockstep.virt.plugins.modules import network as network_module
from ansible_collections.lockstep.virt.plugins.modules import pool as pool_module

URI = "test:///default"

CONSOLE = """<domain type='test'>
  <name>c1</name>
  <memory unit='MiB'>64</memory>
  <os><type>hvm</type></os>
  <devices>
    <graphics type='vnc' port='-1' autoport='yes' passwd='{pw}'/>
    <disk type='network' device='cdrom'>
      <source protocol='http' name='/images/boot.iso'>
        <host name='127.0.0.1' port='8080'/>
        <cookies><cookie name='session'>{cookie}</cookie></cookies>
      </source>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
  </devices>
</domain>"""


def _modes():
    return ((False, False), (True, False), (False, True), (True, True))


def _assert_unchanged_everywhere(run_module, main, args):
    for check_mode, diff in _modes():
        again = run_module(main, args, check_mode=check_mode, diff=diff)
        assert again["changed"] is False, (check_mode, diff, again.get("differences"))
        if diff:
            assert again["diff"]["before"] == again["diff"]["after"]


def test_console_password_and_cookies_are_compared_and_never_shown(hv, run_module):
    args = {"uri": URI, "name": "c1", "xml": CONSOLE.format(pw="first-pass", cookie="cookie-one")}
    first = run_module(domain_module.main, args)
    assert first["changed"] is True and first["actions"] == ["define"]
    # libvirt holds them: only a read with the secure flag shows them
    dom = hv.lookupByName("c1")
    assert "first-pass" not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    secure = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    assert "first-pass" in secure and "cookie-one" in secure
    _assert_unchanged_everywhere(run_module, domain_module.main, args)

    # a new password: seen, applied; neither the old one (read from libvirt) nor the new one is shown
    new = dict(args, xml=CONSOLE.format(pw="second-pass", cookie="cookie-two"))
    for check_mode in (True, False):
        res = run_module(domain_module.main, new, check_mode=check_mode, diff=True)
        assert res["changed"] is True and res["actions"] == ["redefine"]
        text = json.dumps(res)
        for secret in ("first-pass", "second-pass", "cookie-one", "cookie-two"):
            assert secret not in text, secret
        assert "********" in res["diff"]["before"] and "********" in res["diff"]["after"]
    assert "second-pass" in hv.lookupByName("c1").XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
    _assert_unchanged_everywhere(run_module, domain_module.main, new)


def test_unknown_element_is_refused_at_define_with_libvirts_message(hv, run_module):
    xml = """<domain type='test'><name>u1</name><memory unit='MiB'>64</memory>
      <cpu><topology sockets='1' dies='1' clusters='1' cores='1' threads='1'/></cpu>
      <os><type>hvm</type></os></domain>"""
    res = run_module(domain_module.main, {"uri": URI, "name": "u1", "xml": xml})
    assert res["failed"] is True and res["changed"] is False
    assert "failed to validate against schema" in res["msg"] and "cpu" in res["msg"]
    assert "does not know part of this XML" in res["msg"]
    assert "u1" not in [d.name() for d in hv.listAllDomains()]


class UnvalidatedDomainManager(DomainManager):
    """A driver without VIR_DOMAIN_DEFINE_VALIDATE: the define takes no validation flag."""

    VALIDATE_FLAG = None


def _params(name, xml):
    return ArgumentSpecValidator(DOMAIN_ARGUMENT_SPEC).validate({"name": name, "xml": xml}).validated_parameters


def test_without_validation_what_libvirt_dropped_is_named_and_undone(hv):
    good = """<domain type='test'><name>d1</name><memory unit='MiB'>64</memory>
      <cpu><topology sockets='1' dies='1' cores='1' threads='1'/></cpu><os><type>hvm</type></os></domain>"""
    dropped = good.replace("dies='1'", "dies='1' clusters='1'")
    conn = Connection(URI)
    try:
        # a new guest: defined, found not kept, undefined again
        with pytest.raises(VirtError) as err:
            UnvalidatedDomainManager(conn, _params("d1", dropped)).run()
        assert "/domain/cpu/topology/@clusters" in err.value.msg
        assert "the new definition was removed again" in err.value.msg
        assert err.value.result["changed"] is False
        assert "d1" not in [d.name() for d in hv.listAllDomains()]
        # an existing guest: its previous definition is restored
        assert UnvalidatedDomainManager(conn, _params("d1", good)).run()["changed"] is True
        before = hv.lookupByName("d1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        with pytest.raises(VirtError) as err:
            UnvalidatedDomainManager(conn, _params("d1", dropped.replace("64", "96"))).run()
        assert "the previous definition was restored" in err.value.msg
        assert hv.lookupByName("d1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
        assert UnvalidatedDomainManager(conn, _params("d1", good)).run()["changed"] is False
    finally:
        conn.close()


def test_network_ipv6_no_is_libvirts_default(hv, run_module):
    xml = """<network ipv6='no'><name>n6</name><forward mode='nat'/>
      <ip address='192.168.177.1' netmask='255.255.255.0'/></network>"""
    args = {"uri": URI, "name": "n6", "xml": xml}
    assert run_module(network_module.main, args)["changed"] is True
    assert "ipv6" not in hv.networkLookupByName("n6").XMLDesc(0)
    _assert_unchanged_everywhere(run_module, network_module.main, args)
    # ipv6='yes' is kept by libvirt: a change, applied, then unchanged
    yes = dict(args, xml=xml.replace("ipv6='no'", "ipv6='yes'"))
    assert run_module(network_module.main, yes)["changed"] is True
    _assert_unchanged_everywhere(run_module, network_module.main, yes)


def test_a_lease_at_offset_zero_is_libvirts_default(hv, run_module):
    xml = """<domain type='test'><name>l0</name><memory unit='MiB'>64</memory><os><type>hvm</type></os>
      <devices><lease><lockspace>ls</lockspace><key>l0-key</key><target path='/leases/l0' offset='0'/></lease>
      </devices></domain>"""
    args = {"uri": URI, "name": "l0", "xml": xml}
    first = run_module(domain_module.main, args)
    assert first["changed"] is True and not first.get("failed"), first.get("msg")
    assert "<target path='/leases/l0'/>" in hv.lookupByName("l0").XMLDesc(0)
    _assert_unchanged_everywhere(run_module, domain_module.main, args)
    # another offset is kept by libvirt: a change, applied, then unchanged
    moved = dict(args, xml=xml.replace("offset='0'", "offset='1048576'"))
    assert run_module(domain_module.main, moved)["changed"] is True
    assert "offset='1048576'" in hv.lookupByName("l0").XMLDesc(0)
    _assert_unchanged_everywhere(run_module, domain_module.main, moved)


@pytest.mark.parametrize(
    "name,xml",
    [
        (
            "pdir",
            "<pool type='dir'><name>pdir</name><target><path>//tmp//lockstep-pdir/</path><permissions>"
            "<mode>0755</mode><owner>-1</owner><group>-1</group></permissions></target></pool>",
        ),
        (
            "pnfs",
            "<pool type='netfs'><name>pnfs</name><source><host name='127.0.0.1'/><dir path='/export/images/'/>"
            "<format type='nfs'/></source><target><path>/mnt/pnfs/</path></target></pool>",
        ),
        (
            "plvm",
            "<pool type='logical'><name>plvm</name><source><name>vg-images</name><format type='lvm2'/></source>"
            "<target><path>/dev/plvm</path></target></pool>",
        ),
        (
            "plvm2",
            "<pool type='logical'><name>plvm2</name><source><format type='lvm2'/></source>"
            "<target><path>/dev/mapper/whatever</path></target></pool>",
        ),
    ],
)
def test_pool_defaults_and_paths_libvirt_normalises(hv, run_module, name, xml):
    args = {"uri": URI, "name": name, "xml": xml, "build": False}
    first = run_module(pool_module.main, args)
    assert first["changed"] is True, first
    _assert_unchanged_everywhere(run_module, pool_module.main, args)
    hv.storagePoolLookupByName(name).undefine()


DIMM_DOMAIN = """<domain type='kvm'><name>m1</name>
  <maxMemory slots='4' unit='KiB'>8388608</maxMemory>
  <memory unit='GiB'>2</memory><currentMemory unit='GiB'>2</currentMemory>
  <cpu><numa><cell id='0' cpus='0' memory='2' unit='GiB'/></numa></cpu>
  <devices>
    <memory model='dimm'><target><size unit='MiB'>512</size><node>0</node></target></memory>
    <memory model='dimm'><target><size unit='MiB'>256</size><node>0</node></target></memory>
  </devices></domain>"""


def test_memory_devices_are_counted_as_libvirt_counts_them():
    desired = parse_xml(DIMM_DOMAIN)
    # what QEMU's define stores (virDomainDefPostParseMemory: NUMA cells plus the memory devices)
    qemu = parse_xml(DIMM_DOMAIN.replace("<memory unit='GiB'>2</memory>", "<memory unit='KiB'>2883584</memory>"))
    assert compare(desired, qemu).changed is False
    # a driver that keeps <memory> as given (the test driver) compares as given
    assert compare(desired, parse_xml(DIMM_DOMAIN)).changed is False
    # anything else is a difference
    other = parse_xml(DIMM_DOMAIN.replace("<memory unit='GiB'>2</memory>", "<memory unit='KiB'>3000000</memory>"))
    assert compare(desired, other).differences == ["/domain/memory/text()"]
    # a currentMemory above the total is lowered to it by libvirt
    high = parse_xml(
        DIMM_DOMAIN.replace("<currentMemory unit='GiB'>2</currentMemory>", "<currentMemory>9999999</currentMemory>")
    )
    lowered = parse_xml(
        DIMM_DOMAIN.replace("<memory unit='GiB'>2</memory>", "<memory unit='KiB'>2883584</memory>").replace(
            "<currentMemory unit='GiB'>2</currentMemory>", "<currentMemory unit='KiB'>2883584</currentMemory>"
        )
    )
    assert compare(high, lowered).changed is False


# As virt-install 4.1 writes a guest, and (below) as libvirt 9.0 with QEMU stores it - read back on the lab.
VIRT_INSTALL = """<domain type="kvm"><name>v1</name><memory>1048576</memory>
  <os><type arch="x86_64" machine="q35">hvm</type></os>
  <devices>
    <channel type="unix"><source mode="bind"/><target type="virtio" name="org.qemu.guest_agent.0"/></channel>
    <input type="tablet" bus="usb"/>
    <graphics type="spice" port="-1" tlsPort="-1" autoport="yes"><image compression="off"/></graphics>
  </devices></domain>"""
LIBVIRT_STORED = """<domain type='kvm'><name>v1</name><uuid>5f0c1a8e-53a4-4a47-9a43-4f3f2f0b2d11</uuid>
  <memory unit='KiB'>1048576</memory><currentMemory unit='KiB'>1048576</currentMemory>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>
      <address type='virtio-serial' controller='0' bus='0' port='1'/></channel>
    <input type='tablet' bus='usb'><address type='usb' bus='0' port='1'/></input>
    <input type='mouse' bus='ps2'/>
    <input type='keyboard' bus='ps2'/>
    <graphics type='spice' autoport='yes'><listen type='address'/><image compression='off'/></graphics>
  </devices></domain>"""


def test_what_libvirt_adds_or_leaves_out_of_a_virt_install_guest_is_no_difference():
    assert compare(parse_xml(VIRT_INSTALL), parse_xml(LIBVIRT_STORED)).differences == []
    # a USB keyboard the user adds is a difference; the implicit PS/2 devices still are not
    more = VIRT_INSTALL.replace(
        '<input type="tablet" bus="usb"/>', '<input type="tablet" bus="usb"/><input type="keyboard" bus="usb"/>'
    )
    diffs = compare(parse_xml(more), parse_xml(LIBVIRT_STORED)).differences
    assert diffs and all(p.startswith("/domain/devices/input[2]") for p in diffs), diffs
    # a fixed spice port is compared
    fixed = VIRT_INSTALL.replace('port="-1" tlsPort="-1" autoport="yes"', 'port="5901" autoport="no"')
    assert "/domain/devices/graphics/@port" in compare(parse_xml(fixed), parse_xml(LIBVIRT_STORED)).differences
