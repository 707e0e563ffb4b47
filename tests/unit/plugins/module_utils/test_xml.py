"""Safe parsing, canonical form and intent-based drift."""

import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import (
    as_running,
    canonical_text,
    compare,
    parse_xml,
    project,
)

ACTUAL = """<domain type='qemu' id='3'>
  <name>g</name>
  <uuid>6e39d196-091a-4d99-872e-4b996d220325</uuid>
  <memory unit='KiB'>32768</memory>
  <currentMemory unit='KiB'>32768</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>
  <clock offset='utc'/>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/img/g.qcow2' index='1'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </disk>
    <controller type='usb' index='0' model='piix3-uhci'/>
    <controller type='pci' index='0' model='pci-root'/>
    <interface type='network'>
      <mac address='52:54:00:AA:bb:cc'/>
      <source network='default' bridge='virbr0'/>
      <target dev='vnet0'/>
      <model type='virtio'/>
      <alias name='net0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </interface>
    <serial type='pty'><source path='/dev/pts/3'/>
      <target type='isa-serial' port='0'><model name='isa-serial'/></target></serial>
    <console type='pty' tty='/dev/pts/3'><target type='serial' port='0'/></console>
    <input type='mouse' bus='ps2'/>
    <memballoon model='virtio'/>
  </devices>
</domain>"""

DESIRED = """<domain type='qemu'>
  <name>g</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/img/g.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'><source network='default'/><model type='virtio'/></interface>
    <serial type='pty'><target port='0'/></serial>
  </devices>
</domain>"""


def test_what_libvirt_fills_in_is_not_a_difference():
    drift = compare(parse_xml(DESIRED), parse_xml(ACTUAL))
    assert drift.changed is False, drift.differences
    assert drift.before == drift.after


def test_a_specified_value_that_differs_is_a_difference():
    drift = compare(parse_xml(DESIRED.replace(">32<", ">64<")), parse_xml(ACTUAL))
    assert drift.changed is True
    assert drift.differences == ["/domain/memory/text()"]
    assert "32768" in drift.before and "65536" in drift.after


def test_given_uuid_and_mac_are_compared_case_insensitively():
    desired = DESIRED.replace("<name>g</name>", "<name>g</name><uuid>6E39D196-091A-4D99-872E-4B996D220325</uuid>")
    desired = desired.replace(
        "<source network='default'/>", "<mac address='52:54:00:aa:BB:cc'/><source network='default'/>"
    )
    assert compare(parse_xml(desired), parse_xml(ACTUAL)).changed is False
    other = desired.replace("52:54:00:aa:BB:cc", "52:54:00:00:00:01")
    drift = compare(parse_xml(other), parse_xml(ACTUAL))
    assert drift.changed is True


def test_an_unmanaged_extra_disk_is_a_difference_but_controllers_are_not():
    two_disks = ACTUAL.replace(
        "<controller type='usb'",
        "<disk type='file' device='disk'><source file='/img/extra.img'/><target dev='vdb' bus='virtio'/>"
        "<address type='pci' slot='0x05'/></disk><controller type='usb'",
    )
    drift = compare(parse_xml(DESIRED), parse_xml(two_disks))
    assert drift.changed is True
    assert any("disk" in d and "not in the definition" in d for d in drift.differences)
    assert "/img/extra.img" in drift.before and "address" not in drift.before


def test_a_removed_interface_is_a_difference():
    no_nic = DESIRED.replace(
        "<interface type='network'><source network='default'/><model type='virtio'/></interface>", ""
    )
    drift = compare(parse_xml(no_nic), parse_xml(ACTUAL))
    assert drift.changed is True and any("interface" in d for d in drift.differences)


def test_versioned_machine_matches_alias_but_not_another_machine():
    assert compare(parse_xml(DESIRED), parse_xml(ACTUAL)).changed is False
    q35 = DESIRED.replace("machine='pc'", "machine='q35'")
    assert compare(parse_xml(q35), parse_xml(ACTUAL)).changed is True


def test_disks_are_paired_by_target_not_order():
    actual = parse_xml(
        "<domain><devices><disk><source file='/b'/><target dev='vdb'/></disk>"
        "<disk><source file='/a'/><target dev='vda'/></disk></devices></domain>"
    )
    desired = parse_xml(
        "<domain><devices><disk><source file='/a'/><target dev='vda'/></disk>"
        "<disk><source file='/b'/><target dev='vdb'/></disk></devices></domain>"
    )
    assert compare(desired, actual).changed is False
    swapped = parse_xml(
        "<domain><devices><disk><source file='/b'/><target dev='vda'/></disk>"
        "<disk><source file='/a'/><target dev='vdb'/></disk></devices></domain>"
    )
    assert compare(swapped, actual).changed is True


def test_absent_actual_is_a_full_difference():
    drift = compare(parse_xml(DESIRED), None)
    assert drift.changed is True and drift.before == "" and "<name>g</name>" in drift.after


def test_projection_keeps_only_what_desired_names():
    p = project(parse_xml(DESIRED), parse_xml(ACTUAL))
    text = canonical_text(p)
    assert "alias" not in text and "pci-root" not in text and "memballoon" not in text and "uuid" not in text


def test_canonical_form_sorts_attributes_and_units():
    a = canonical_text(parse_xml("<domain b='2' a='1'><memory unit='GiB'>1</memory></domain>"))
    b = canonical_text(parse_xml("<domain a='1'  b='2'>\n <memory>1048576</memory>\n</domain>"))
    assert a == b
    assert '<domain a="1" b="2">' in a


def test_ignored_subtree_is_not_compared():
    desired = parse_xml("<domain><cpu mode='host-model'/></domain>")
    live = parse_xml("<domain><cpu mode='custom' match='exact'><model>Skylake</model></cpu></domain>")
    assert compare(desired, live).changed is True
    assert compare(desired, live, ignore=("cpu",)).changed is False


@pytest.mark.parametrize(
    "text,message",
    [
        ('<!DOCTYPE d [<!ENTITY e SYSTEM "file:///etc/passwd">]><domain>&e;</domain>', "external entity"),
        ('<!DOCTYPE d [<!ENTITY e PUBLIC "x" "http://example.invalid/e">]><domain>&e;</domain>', "external entity"),
        ('<!DOCTYPE d [<!ENTITY e "lol">]><domain>&e;</domain>', "DOCTYPE"),
        ("<domain><name>x</name>", "not well-formed"),
        ("", "empty"),
        ("<network/>", "<domain> root"),
    ],
)
def test_unsafe_or_bad_xml_is_refused(text, message):
    with pytest.raises(ValidationError) as exc:
        parse_xml(text, "domain", "xml")
    assert message in exc.value.msg


def test_xml_declaration_is_accepted():
    root = parse_xml("<?xml version='1.0' encoding='UTF-8'?>\n<domain><name>x</name></domain>", "domain")
    assert root.findtext("name") == "x"


@pytest.mark.parametrize(
    "path,libvirt_writes",
    [
        ("//", "//"),
        ("///", "/"),
        ("/", "/"),
        ("/../foo", "/../foo"),
        ("/foo///bar/", "/foo/bar"),
        ("//tmp//x/", "//tmp/x"),
        ("/mnt/pool/", "/mnt/pool"),
        ("gluster://host/vol//", "gluster://host/vol//"),
    ],
)
def test_paths_are_sanitised_as_libvirt_does(path, libvirt_writes):
    # the cases of virFileSanitizePath's own comment (src/util/virfile.c)
    from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import _sanitize_path

    assert _sanitize_path(path) == libvirt_writes


def test_libvirt_normalisations_table_is_documented():
    from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import LIBVIRT_NORMALISATIONS

    for root, what, rule in LIBVIRT_NORMALISATIONS:
        assert root in ("domain", "network", "pool") and what and rule.__code__.co_argcount == 1


def test_a_running_guests_autoselected_firmware_is_no_drift():
    # libvirt 9.0: the inactive definition keeps <os firmware='efi'>; the live XML of the running guest has the
    # loader and nvram the autoselection chose instead, and the features in its own order
    desired = parse_xml(
        "<domain><os firmware='efi'><type machine='q35'>hvm</type><firmware>"
        "<feature enabled='yes' name='secure-boot'/><feature enabled='yes' name='enrolled-keys'/></firmware></os>"
        "<devices><tpm model='tpm-crb'><backend type='emulator' version='2.0' persistent_state='yes'/></tpm>"
        "</devices></domain>"
    )
    live = parse_xml(
        "<domain><os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><firmware>"
        "<feature enabled='yes' name='enrolled-keys'/><feature enabled='yes' name='secure-boot'/></firmware>"
        "<loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>"
        "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>/var/lib/libvirt/qemu/nvram/g_VARS.fd</nvram>"
        "<boot dev='hd'/></os><devices><tpm model='tpm-crb'>"
        "<backend type='emulator' version='2.0' persistent_state='yes'/><alias name='tpm0'/></tpm></devices></domain>"
    )
    assert compare(desired, live).differences == []
    bios = parse_xml(
        "<domain><os><type>hvm</type><loader type='rom'>/usr/share/seabios/bios.bin</loader></os></domain>"
    )
    assert compare(desired, bios).changed


def test_a_migrated_guest_runs_its_firmware_features_as_the_loader_libvirt_chose():
    desired = parse_xml(
        "<domain><os firmware='efi'><type>hvm</type><firmware><feature enabled='yes' name='enrolled-keys'/>"
        "<feature enabled='yes' name='secure-boot'/></firmware></os></domain>"
    )

    def live(secure):  # libvirt 9.0, the live XML on the destination of a migration: no <firmware>
        return parse_xml(
            "<domain><os><type machine='pc-q35-7.2'>hvm</type><loader readonly='yes' {} type='pflash'>/c.fd</loader>"
            "<nvram>/var/lib/libvirt/qemu/nvram/g_VARS.fd</nvram></os></domain>".format(secure)
        )

    assert compare(desired, live("secure='yes'")).differences == ["/domain/os/firmware[1] (missing)"]
    assert compare(as_running(desired, live("secure='yes'")), live("secure='yes'")).differences == []
    # a loader without Secure Boot does not run what is asked
    assert compare(as_running(desired, live("")), live("")).changed
    # a live XML that names its features is compared with them
    assert as_running(desired, desired) is desired
