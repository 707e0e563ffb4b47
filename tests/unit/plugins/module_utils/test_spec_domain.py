"""spec -> domain XML, including a property test through libvirt's test driver."""

import uuid as uuidlib

import libvirt
import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import LockConfig
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managed import MANAGED_NS, is_managed
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec import common
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.domain import (
    DOMAIN_SPEC_OPTIONS,
    build_domain_xml,
    memory_mib,
    normalize_domain_spec,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import compare, parse_xml, to_text

LAB_LOCKS = LockConfig(manager="lockd", file_lockspace_dir="/var/lib/lockstep-lab/shared/lockd")


def test_minimal_spec():
    root = build_domain_xml("m", {"memory": 32}, uuid="6e39d196-091a-4d99-872e-4b996d220325")
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "m"
    assert root.findtext("uuid") == "6e39d196-091a-4d99-872e-4b996d220325"
    assert root.find("memory").text == "32768" and root.find("memory").get("unit") == "KiB"
    assert root.findtext("vcpu") == "1"
    assert is_managed(root)
    assert root.find("os/type").text == "hvm"
    assert [f.tag for f in root.find("features")] == ["acpi", "apic"]


def test_full_spec_writes_every_part():
    spec = {
        "type": "kvm",
        "memory": "1GiB",
        "current_memory": "512MiB",
        "vcpus": 2,
        "cpu": {"mode": "host-passthrough"},
        "arch": "x86_64",
        "machine": "q35",
        "firmware": "uefi",
        "kernel": "/boot/vmlinuz",
        "initrd": "/boot/initrd",
        "cmdline": "console=ttyS0",
        "disks": [
            {"path": "/dev/vg/lv"},
            {"pool": "default", "volume": "v.qcow2", "format": "qcow2", "cache": "none"},
            {"path": "/img/shared.raw", "shareable": True, "bus": "scsi"},
            {"device": "cdrom", "path": "/iso/x.iso"},
        ],
        "interfaces": [{"bridge": "br0", "mac": "52:54:00:AA:00:01", "model": "e1000"}],
        "graphics": {"type": "spice", "listen": "127.0.0.1"},
        "serial_console": True,
        "guest_agent": True,
        "channels": [{"name": "org.example.0"}],
        "lease": {},
        "metadata": {"team": "ops"},
        "on_crash": "restart",
    }
    root = build_domain_xml("full", spec, uuid="6e39d196-091a-4d99-872e-4b996d220325", lock_config=LAB_LOCKS)
    text = to_text(root)
    assert root.get("type") == "kvm"
    assert root.find("memory").text == str(1024 * 1024) and root.find("currentMemory").text == str(512 * 1024)
    assert root.find("os").get("firmware") == "efi"
    assert root.find("os/type").get("machine") == "q35"
    assert root.findtext("os/kernel") == "/boot/vmlinuz" and root.findtext("os/cmdline") == "console=ttyS0"
    disks = root.findall("devices/disk")
    assert [d.get("type") for d in disks] == ["block", "volume", "file", "file"]
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb", "sda", "sdb"]
    assert disks[0].find("source").get("dev") == "/dev/vg/lv"
    assert disks[1].find("source").get("pool") == "default" and disks[1].find("driver").get("cache") == "none"
    assert disks[2].find("shareable") is not None
    assert disks[3].get("device") == "cdrom" and disks[3].find("readonly") is not None
    assert disks[3].find("target").get("bus") == "sata"
    iface = root.find("devices/interface")
    assert iface.get("type") == "bridge" and iface.find("mac").get("address") == "52:54:00:aa:00:01"
    lease = root.find("devices/lease")
    assert lease.findtext("lockspace") == "lockd"
    assert lease.findtext("key") == "6e39d196-091a-4d99-872e-4b996d220325"
    assert lease.find("target").get("path") == "/var/lib/lockstep-lab/shared"
    names = [c.find("target").get("name") for c in root.findall("devices/channel")]
    assert names == ["org.qemu.guest_agent.0", "org.example.0"]
    assert root.find("devices/graphics").get("listen") == "127.0.0.1"
    assert root.find("cpu").get("mode") == "host-passthrough"
    assert root.findtext("on_crash") == "restart"
    assert MANAGED_NS in text and "team" in text


def test_lease_path_plus_lockspace_is_the_lockspace_dir():
    cfg = LockConfig(manager="lockd", file_lockspace_dir="/srv/x/leases/")
    root = build_domain_xml("l", {"memory": 32, "lease": {"key": "k1"}}, uuid=str(uuidlib.uuid4()), lock_config=cfg)
    lease = root.find("devices/lease")
    assert lease.find("target").get("path") + "/" + lease.findtext("lockspace") == "/srv/x/leases"
    assert lease.findtext("key") == "k1"


def test_lease_without_path_and_without_lockspace_dir_fails():
    with pytest.raises(ValidationError) as exc:
        build_domain_xml("l", {"memory": 32, "lease": {}}, lock_config=LockConfig(manager=None))
    assert "spec.lease.path is required" in exc.value.msg


@pytest.mark.parametrize(
    "value,mib",
    [(32, 32), ("32", 32), ("32MiB", 32), ("2G", 2048), ("1 GiB", 1024), ("65536KiB", 64), ("1TiB", 1024 * 1024)],
)
def test_memory_units(value, mib):
    assert memory_mib(value) == mib


@pytest.mark.parametrize("value", [-5, 0, "0", "17TiB", 10**9, "lots", "12parsecs", True, None, "1000KiB", 1.5])
def test_bad_memory_is_refused(value):
    with pytest.raises(ValidationError):
        memory_mib(value)


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"memory": 32, "colour": "red"}, "unsupported keys spec.colour"),
        ({"memory": 32, "disks": [{"path": "/a", "speed": 1}]}, "spec.disks.speed"),
        ({"memory": 32, "vcpus": 0}, "spec.vcpus"),
        ({"memory": 32, "vcpus": "many"}, "vcpus"),
        ({"memory": 32, "boot": ["hd"], "kernel": "/k"}, "mutually exclusive"),
        ({"memory": 32, "cmdline": "x"}, "need spec.kernel"),
        ({"memory": 32, "disks": [{"path": "/a", "target": "vda"}, {"path": "/b", "target": "vda"}]}, "two disks"),
        ({"memory": 32, "disks": [{"pool": "p"}]}, "pool and volume go together"),
        ({"memory": 32, "disks": [{}]}, "give path"),
        ({"memory": 32, "interfaces": [{}]}, "exactly one"),
        ({"memory": 32, "interfaces": [{"network": "n", "mac": "zz"}]}, "not a MAC"),
        ({"memory": 32, "uuid": "nope"}, "not a UUID"),
        ({"memory": 32, "cpu": {"mode": "custom"}}, "cpu.model"),
        ({"memory": 32, "current_memory": 64}, "must not exceed"),
        ({"memory": 32, "metadata": {"a b": "x"}}, "not a valid name"),
        ({"memory": 32, "metadata": {"a": "\x1f"}}, "control characters"),
        ({"memory": 32, "title": "a\x00b"}, "control characters"),
        ({"vcpus": 1}, "memory"),
        ("not a dict", "dictionary"),
    ],
)
def test_bad_spec_is_refused_with_a_clear_message(spec, message):
    with pytest.raises(ValidationError) as exc:
        normalize_domain_spec(spec)
    assert message in exc.value.msg


def test_normalize_is_idempotent():
    once = normalize_domain_spec({"memory": "64MiB", "disks": [{"path": "/a"}]})
    twice = normalize_domain_spec(once)
    assert twice["memory_mib"] == once["memory_mib"] == 64
    assert twice["disks"] == once["disks"]


def test_unknown_keys_are_named_by_path_without_reading_core_messages(monkeypatch):
    """Unknown keys are found by walking the options, before ansible-core runs: its wording cannot matter."""

    def core_must_not_run(*_a, **_kw):
        raise AssertionError("ansible-core's validator ran for a spec with unknown keys")

    monkeypatch.setattr(common.ArgumentSpecValidator, "validate", core_must_not_run)
    spec = {
        "memory": 32,
        "colour": "red",
        "disks": [{"path": "/a"}, {"path": "/b", "speed": 1}, {"path": "/c", "speed": 2}],
        "cpu": {"mode": "host-model", "flavour": "x"},
    }
    with pytest.raises(ValidationError) as exc:
        normalize_domain_spec(spec)
    assert exc.value.msg == "invalid spec: unsupported keys spec.colour, spec.cpu.flavour, spec.disks.speed"


def test_core_messages_pass_through_unchanged():
    options = {"vcpus": {"type": "int"}, "boot": {"type": "list", "elements": "str", "choices": ["hd", "cdrom"]}}
    spec = {"vcpus": "many", "boot": ["floppy"]}
    core = ArgumentSpecValidator({"spec": {"type": "dict", "options": options}}).validate({"spec": spec})
    with pytest.raises(ValidationError) as exc:
        common.validate_spec(options, spec)
    assert core.error_messages and exc.value.msg == "invalid spec: " + "; ".join(core.error_messages)


def test_a_module_validated_spec_is_not_validated_again(monkeypatch):
    checked = ArgumentSpecValidator({"spec": {"type": "dict", "options": DOMAIN_SPEC_OPTIONS}}).validate(
        {"spec": {"memory": "64MiB", "disks": [{"path": "/a"}]}}
    )
    module_param = checked.validated_parameters["spec"]

    def core_must_not_run(*_a, **_kw):
        raise AssertionError("validated again")

    monkeypatch.setattr(common.ArgumentSpecValidator, "validate", core_must_not_run)
    s = normalize_domain_spec(module_param, validated=True)
    assert s["memory_mib"] == 64 and s["disks"][0]["type"] == "file"
    assert "memory_mib" not in module_param and module_param["disks"][0]["type"] is None  # a copy was normalized
    with pytest.raises(AssertionError, match="validated again"):
        normalize_domain_spec(module_param)


# ------------------------------------------------------------------ property: spec -> libvirt -> unchanged
paths = st.from_regex(r"/[a-z]{1,8}/[a-z0-9]{1,8}\.(img|qcow2)", fullmatch=True)
disk = st.fixed_dictionaries(
    {"path": paths},
    optional={
        "format": st.sampled_from(["raw", "qcow2"]),
        "bus": st.sampled_from(["virtio", "sata", "scsi"]),
        "cache": st.sampled_from(["none", "writeback", "writethrough"]),
        "readonly": st.booleans(),
        "shareable": st.booleans(),
    },
)
nic = st.one_of(
    st.fixed_dictionaries(
        {"network": st.sampled_from(["default", "lab"])}, optional={"model": st.sampled_from(["virtio", "e1000"])}
    ),
    st.fixed_dictionaries({"bridge": st.sampled_from(["br0", "lsvbr0"])}),
)
specs = st.fixed_dictionaries(
    {"memory": st.one_of(st.integers(1, 65536), st.sampled_from(["32MiB", "1GiB", "2G", "8192KiB"]))},
    optional={
        "vcpus": st.integers(1, 16),
        "machine": st.sampled_from(["pc", "q35"]),
        "arch": st.just("x86_64"),
        "boot": st.lists(st.sampled_from(["hd", "cdrom", "network"]), min_size=1, max_size=3, unique=True),
        "disks": st.lists(disk, max_size=4),
        "interfaces": st.lists(nic, max_size=3),
        "serial_console": st.booleans(),
        "guest_agent": st.booleans(),
        "graphics": st.fixed_dictionaries({}, optional={"type": st.sampled_from(["vnc", "spice"])}),
        "features": st.lists(st.sampled_from(["acpi", "apic", "pae"]), unique=True),
        "title": st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=20),
        "metadata": st.dictionaries(
            st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
            st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=10),
            max_size=3,
        ),
        "lease": st.fixed_dictionaries({}, optional={"key": st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True)}),
        "on_reboot": st.sampled_from(["destroy", "restart"]),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=specs)
def test_spec_defined_in_libvirt_reads_back_unchanged(hv, spec):
    root = build_domain_xml("prop", spec, lock_config=LAB_LOCKS)
    dom = hv.defineXML(to_text(root))
    try:
        actual = parse_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), "domain")
        drift = compare(root, actual)
        assert drift.changed is False, (drift.differences, drift.before, drift.after)
        # and a change is seen: one more vCPU than asked
        more = build_domain_xml(
            "prop", dict(spec, vcpus=spec.get("vcpus", 1) + 1), uuid=root.findtext("uuid"), lock_config=LAB_LOCKS
        )
        assert compare(more, actual).changed is True
    finally:
        dom.undefine()


def test_secure_boot_uefi_tpm_xml():
    root = build_domain_xml(
        "sb", {"memory": 64, "firmware": "uefi", "secure_boot": True, "tpm": {"persistent_state": True}}, uuid=None
    )
    assert root.find("os").get("firmware") == "efi"
    assert root.find("os/type").get("machine") == "q35"  # Secure Boot needs SMM, which needs q35
    assert [(f.get("name"), f.get("enabled")) for f in root.findall("os/firmware/feature")] == [
        ("enrolled-keys", "yes"),
        ("secure-boot", "yes"),
    ]
    assert root.find("features/smm").get("state") == "on"
    tpm = root.find("devices/tpm")
    assert tpm.get("model") == "tpm-crb"
    assert dict(tpm.find("backend").attrib) == {"type": "emulator", "version": "2.0", "persistent_state": "yes"}


def test_uefi_without_secure_boot_leaves_the_choice_to_libvirt_and_false_disables_it():
    assert build_domain_xml("u", {"memory": 64, "firmware": "uefi"}).find("os/firmware") is None
    off = build_domain_xml("u", {"memory": 64, "firmware": "uefi", "secure_boot": False, "features": ["acpi", "smm"]})
    assert [(f.get("name"), f.get("enabled")) for f in off.findall("os/firmware/feature")] == [("secure-boot", "no")]
    assert off.find("os/type").get("machine") is None
    tis = build_domain_xml("u", {"memory": 64, "tpm": {"model": "tpm-tis", "version": "1.2"}}).find("devices/tpm")
    assert tis.get("model") == "tpm-tis" and dict(tis.find("backend").attrib) == {"type": "emulator", "version": "1.2"}


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"secure_boot": True}, "spec.secure_boot needs spec.firmware: uefi"),
        ({"firmware": "uefi", "secure_boot": True, "machine": "pc-i440fx-7.2"}, "needs the q35 machine type"),
        ({"tpm": {"version": "1.2"}}, "spec.tpm.version 1.2 needs spec.tpm.model tpm-tis"),
    ],
)
def test_firmware_refusals(spec, message):
    with pytest.raises(ValidationError, match=message):
        normalize_domain_spec(dict(spec, memory=64))


def test_secure_boot_keeps_a_given_q35_machine_and_one_smm():
    s = normalize_domain_spec(
        {"memory": 64, "firmware": "uefi", "secure_boot": True, "machine": "pc-q35-7.2", "features": ["acpi", "smm"]}
    )
    root = build_domain_xml("q", s, normalized=True)
    assert root.find("os/type").get("machine") == "pc-q35-7.2"
    assert [f.tag for f in root.find("features")] == ["acpi", "smm"] and root.find("features/smm").get("state") == "on"
