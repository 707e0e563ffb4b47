# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Structured ``spec`` -> libvirt domain XML, and the argument spec of that ``spec``.

``DOMAIN_SPEC_OPTIONS`` is the ``options`` of the module's ``spec`` dict option (documented in the
domain module). :func:`normalize_domain_spec` validates a spec dict against it (unknown keys, types,
choices, sizes) and fills defaults; :func:`build_domain_xml` turns it into an lxml element.
"""

from __future__ import annotations

import re
import uuid as uuidlib

from ansible_collections.lockstep.virt.plugins.module_utils._virt.cloudinit import (
    CLOUD_INIT_OPTIONS,
    mark_seed,
    seed_files,
    seed_hash,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    default_lease_lockspace,
    default_lease_target,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managed import mark_managed, set_user_metadata
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.common import sub, validate_spec
from ansible_collections.lockstep.virt.plugins.module_utils._virt.units import parse_mib, parse_size
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import etree

MIN_MEMORY_MIB = 1
MAX_MEMORY_MIB = 16 * 1024 * 1024  # 16 TiB: anything larger is a typo
MAX_VCPUS = 4096
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"

DISK_OPTIONS = {
    "type": {"type": "str", "choices": ["file", "block", "volume"]},
    "path": {"type": "str"},
    "pool": {"type": "str"},
    "volume": {"type": "str"},
    "target": {"type": "str"},
    "bus": {"type": "str", "choices": ["virtio", "sata", "scsi", "ide", "usb"]},
    "device": {"type": "str", "choices": ["disk", "cdrom", "floppy", "lun"], "default": "disk"},
    "format": {"type": "str"},
    "cache": {"type": "str", "choices": ["default", "none", "writethrough", "writeback", "directsync", "unsafe"]},
    "readonly": {"type": "bool", "default": False},
    "shareable": {"type": "bool", "default": False},
    "boot_order": {"type": "int"},
    "size": {"type": "raw"},
}

INTERFACE_OPTIONS = {
    "network": {"type": "str"},
    "bridge": {"type": "str"},
    "model": {"type": "str", "default": "virtio"},
    "mac": {"type": "str"},
}

GRAPHICS_OPTIONS = {
    "type": {"type": "str", "choices": ["vnc", "spice"], "default": "vnc"},
    "listen": {"type": "str"},
    "port": {"type": "int"},
}

CHANNEL_OPTIONS = {
    "name": {"type": "str", "required": True},
    "type": {"type": "str", "choices": ["unix", "pty", "spicevmc"], "default": "unix"},
}

LEASE_OPTIONS = {
    "key": {"type": "str", "no_log": False},
    "lockspace": {"type": "str"},
    "path": {"type": "str"},
}

CPU_OPTIONS = {
    "mode": {"type": "str", "choices": ["host-passthrough", "host-model", "custom", "maximum"], "default": "custom"},
    "model": {"type": "str"},
}

TPM_OPTIONS = {
    "model": {"type": "str", "choices": ["tpm-crb", "tpm-tis"], "default": "tpm-crb"},
    "version": {"type": "str", "choices": ["2.0", "1.2"], "default": "2.0"},
    "persistent_state": {"type": "bool", "default": False},
}

_LIFECYCLE_ACTIONS = ["destroy", "restart", "preserve", "rename-restart", "coredump-destroy", "coredump-restart"]

DOMAIN_SPEC_OPTIONS = {
    "type": {"type": "str", "choices": ["qemu", "kvm"], "default": "qemu"},
    "uuid": {"type": "str"},
    "title": {"type": "str"},
    "description": {"type": "str"},
    "memory": {"type": "raw", "required": True},
    "current_memory": {"type": "raw"},
    "vcpus": {"type": "int", "default": 1},
    "cpu": {"type": "dict", "options": CPU_OPTIONS},
    "arch": {"type": "str"},
    "machine": {"type": "str"},
    "firmware": {"type": "str", "choices": ["bios", "uefi"], "default": "bios"},
    "secure_boot": {"type": "bool"},
    "boot": {"type": "list", "elements": "str", "choices": ["hd", "cdrom", "network", "fd"]},
    "kernel": {"type": "str"},
    "initrd": {"type": "str"},
    "cmdline": {"type": "str"},
    "features": {"type": "list", "elements": "str", "default": ["acpi", "apic"]},
    "on_poweroff": {"type": "str", "choices": _LIFECYCLE_ACTIONS},
    "on_reboot": {"type": "str", "choices": _LIFECYCLE_ACTIONS},
    "on_crash": {"type": "str", "choices": _LIFECYCLE_ACTIONS},
    "disks": {"type": "list", "elements": "dict", "options": DISK_OPTIONS, "default": []},
    "interfaces": {"type": "list", "elements": "dict", "options": INTERFACE_OPTIONS, "default": []},
    "graphics": {"type": "dict", "options": GRAPHICS_OPTIONS},
    "serial_console": {"type": "bool", "default": False},
    "guest_agent": {"type": "bool", "default": False},
    "channels": {"type": "list", "elements": "dict", "options": CHANNEL_OPTIONS, "default": []},
    "tpm": {"type": "dict", "options": TPM_OPTIONS},
    "lease": {"type": "dict", "options": LEASE_OPTIONS},
    "metadata": {"type": "dict", "default": {}},
    "cloud_init": {"type": "dict", "options": CLOUD_INIT_OPTIONS},
}

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def memory_mib(value, what="spec.memory"):
    """Whole MiB from a size (a number is MiB; see :func:`units.parse_mib`), within the supported range."""
    negative = isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0
    mib = -1 if negative else parse_mib(value, what)
    if mib < MIN_MEMORY_MIB or mib > MAX_MEMORY_MIB:
        raise ValidationError(
            "{} must be between {} MiB and {} MiB (16 TiB), got {!r}".format(
                what, MIN_MEMORY_MIB, MAX_MEMORY_MIB, value
            )
        )
    return mib


_DERIVED = ("memory_mib", "current_memory_mib")
_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _check_text(value, what):
    if value is not None and _XML_UNSAFE.search(str(value)):
        raise ValidationError("{} contains characters XML cannot hold (control characters)".format(what))


def _drop_none(value):
    """Copy without None values (an already validated spec carries None for every unset option)."""
    if isinstance(value, dict):
        return dict((k, _drop_none(v)) for k, v in value.items() if v is not None)
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def normalize_domain_spec(spec, validated=False):
    """Validate ``spec`` against DOMAIN_SPEC_OPTIONS, fill defaults and check values.

    Returns a new dict; raises ValidationError (unknown keys, wrong types, bad sizes, conflicts).
    ``validated``: ``spec`` is the domain module's option, which AnsibleModule validated against
    DOMAIN_SPEC_OPTIONS already; only what the options cannot express is checked.
    """
    if isinstance(spec, dict) and not validated:  # normalized before: what was derived goes, unset options go
        spec = _drop_none(dict((k, v) for k, v in spec.items() if k not in _DERIVED))
    s = validate_spec(DOMAIN_SPEC_OPTIONS, spec, validated=validated)
    s["memory_mib"] = memory_mib(s["memory"])
    if s.get("current_memory") is not None:
        s["current_memory_mib"] = memory_mib(s["current_memory"], "spec.current_memory")
        if s["current_memory_mib"] > s["memory_mib"]:
            raise ValidationError("spec.current_memory must not exceed spec.memory")
    else:
        s["current_memory_mib"] = s["memory_mib"]
    if s["vcpus"] < 1 or s["vcpus"] > MAX_VCPUS:
        raise ValidationError("spec.vcpus must be between 1 and {}, got {}".format(MAX_VCPUS, s["vcpus"]))
    if s.get("uuid"):
        try:
            s["uuid"] = str(uuidlib.UUID(s["uuid"]))
        except ValueError:
            raise ValidationError("spec.uuid is not a UUID: {!r}".format(s["uuid"])) from None
    if s.get("kernel") is None and (s.get("initrd") or s.get("cmdline")):
        raise ValidationError("spec.initrd and spec.cmdline need spec.kernel")
    if s.get("kernel") and s.get("boot"):
        raise ValidationError("spec.boot and spec.kernel are mutually exclusive")
    if s.get("cpu") and s["cpu"].get("mode") == "custom" and not s["cpu"].get("model"):
        raise ValidationError("spec.cpu.model is required when spec.cpu.mode is custom")
    _firmware(s)
    targets = set()
    for i, d in enumerate(s["disks"]):
        where = "spec.disks[{}]".format(i)
        if d.get("pool") or d.get("volume"):
            if not (d.get("pool") and d.get("volume")):
                raise ValidationError("{}: pool and volume go together".format(where))
            if d.get("path"):
                raise ValidationError("{}: give path or pool+volume, not both".format(where))
            if d.get("type") not in (None, "volume"):
                raise ValidationError("{}: pool+volume means type volume".format(where))
            d["type"] = "volume"
        elif d.get("path"):
            if not d["path"].startswith("/"):
                raise ValidationError("{}.path must be absolute, got {!r}".format(where, d["path"]))
            if d.get("type") is None:
                d["type"] = "block" if d["path"].startswith("/dev/") else "file"
            if d["type"] == "volume":
                raise ValidationError("{}: type volume needs pool and volume".format(where))
        elif d["device"] != "cdrom":
            raise ValidationError("{}: give path, or pool and volume".format(where))
        else:
            d["type"] = d.get("type") or "file"
        if d.get("size") is not None:
            parse_size(d["size"], "{}.size".format(where))
        if d["device"] == "cdrom":
            d["readonly"] = True
        if d.get("bus") is None:
            if d["device"] == "cdrom":
                d["bus"] = "sata" if (s.get("machine") or "").startswith(("q35", "pc-q35")) else "ide"
            else:
                d["bus"] = "virtio"
        if d.get("boot_order") is not None and s.get("boot"):
            raise ValidationError("{}.boot_order conflicts with spec.boot".format(where))
    _assign_disk_targets(s["disks"])
    for d in s["disks"]:
        if d["target"] in targets:
            raise ValidationError("two disks use target {}".format(d["target"]))
        targets.add(d["target"])
    for i, nic in enumerate(s["interfaces"]):
        where = "spec.interfaces[{}]".format(i)
        if bool(nic.get("network")) == bool(nic.get("bridge")):
            raise ValidationError("{}: give exactly one of network or bridge".format(where))
        if nic.get("mac"):
            if not _MAC_RE.match(nic["mac"]):
                raise ValidationError("{}.mac is not a MAC address: {!r}".format(where, nic["mac"]))
            nic["mac"] = nic["mac"].lower()
    for key, value in (s.get("metadata") or {}).items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", str(key)):
            raise ValidationError("spec.metadata key {!r} is not a valid name".format(key))
        if isinstance(value, (dict, list)):
            raise ValidationError("spec.metadata values must be strings or numbers ({})".format(key))
        _check_text(value, "spec.metadata.{}".format(key))
    for key in ("title", "description", "cmdline"):
        _check_text(s.get(key), "spec." + key)
    if s.get("cloud_init") is not None:
        _cloud_init(s)
    if s.get("tpm") and s["tpm"]["version"] == "1.2" and s["tpm"]["model"] == "tpm-crb":
        raise ValidationError("spec.tpm.version 1.2 needs spec.tpm.model tpm-tis (a CRB TPM is TPM 2.0 only)")
    return s


def _is_q35(machine):
    return machine == "q35" or machine.startswith("pc-q35-")


def _firmware(s):
    """spec.secure_boot: UEFI only, on a q35 machine (the machine is set to q35 when the spec names none),
    with SMM on (``<smm state='on'/>``, written by :func:`build_domain_xml`)."""
    if s.get("secure_boot") is None:
        return
    if s["firmware"] != "uefi":
        raise ValidationError(
            "spec.secure_boot needs spec.firmware: uefi (Secure Boot is a UEFI feature; SeaBIOS has none)"
        )
    if not s["secure_boot"]:
        return
    if not s.get("machine"):
        s["machine"] = "q35"
    elif not _is_q35(s["machine"]):
        raise ValidationError(
            "spec.secure_boot needs the q35 machine type (OVMF's Secure Boot builds need SMM, which the pc "
            "(i440fx) machine cannot give them); spec.machine is {!r}: set it to q35 or leave it out".format(
                s["machine"]
            )
        )
    if any(str(f).strip() == "smm" for f in s.get("features") or []):
        s["features"] = [f for f in s["features"] if str(f).strip() != "smm"]


def _cloud_init(s):
    """Check spec.cloud_init and give it a pool: the pool of the first disk that is a volume."""
    ci = s["cloud_init"]
    for key in ("user_data", "meta_data", "network_config"):
        value = ci.get(key)
        if value is not None and not isinstance(value, (str, dict, list)):
            raise ValidationError("spec.cloud_init.{} must be text or a dictionary".format(key))
        if isinstance(value, str):
            _check_text(value, "spec.cloud_init." + key)
    if not ci.get("pool"):
        pools = [d["pool"] for d in s["disks"] if d["type"] == "volume"]
        if not pools:
            raise ValidationError("spec.cloud_init.pool is required when no disk of spec.disks is a volume")
        ci["pool"] = pools[0]
    if ci.get("volume") is not None and ("/" in ci["volume"] or not ci["volume"].strip()):
        raise ValidationError("spec.cloud_init.volume must be a volume name, got {!r}".format(ci["volume"]))


def _seed_disk(name, s):
    """The read-only CD-ROM of the cloud-init seed: an IDE (SATA on q35) target no disk uses."""
    ci = s["cloud_init"]
    bus = "sata" if (s.get("machine") or "").startswith(("q35", "pc-q35")) else "ide"
    seed = {"type": "volume", "device": "cdrom", "bus": bus, "format": "raw", "readonly": True, "shareable": False}
    seed.update(pool=ci["pool"], volume=ci.get("volume") or "{}-cidata.iso".format(name))
    _assign_disk_targets([dict(d) for d in s["disks"]] + [seed])
    return seed


_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd", "usb": "sd", "ide": "hd"}


def _disk_letter(i):
    letters = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        letters = chr(ord("a") + r) + letters
    return letters


def _assign_disk_targets(disks):
    used = set(d["target"] for d in disks if d.get("target"))
    for d in disks:
        if d.get("target"):
            continue
        prefix = _PREFIX.get(d["bus"], "vd")
        i = 0
        while prefix + _disk_letter(i) in used:
            i += 1
        d["target"] = prefix + _disk_letter(i)
        used.add(d["target"])


def lease_settings(spec, uuid, lock_config=None):
    """(key, lockspace, target path) of spec.lease with its defaults; ValidationError when unknowable."""
    lease = spec.get("lease")
    if not lease:
        return None
    key = lease.get("key") or uuid
    lockspace = lease.get("lockspace") or default_lease_lockspace(lock_config)
    path = lease.get("path") or default_lease_target(lock_config, lockspace)
    if not path:
        raise ValidationError(
            "spec.lease.path is required: this host's lock configuration has no file_lockspace_dir "
            "(or it cannot be read from here)"
        )
    return key, lockspace, path


def build_domain_xml(name, spec, uuid=None, lock_config=None, normalized=False):
    """Domain XML (an lxml element) for ``spec``.

    ``uuid``: the UUID to write when spec.uuid is not given (the existing domain's, or a new one);
    a VM lease's key defaults to it. ``lock_config``: the host's LockConfig (VM lease defaults).
    """
    s = spec if normalized else normalize_domain_spec(spec)
    uuid = s.get("uuid") or uuid or str(uuidlib.uuid4())
    root = etree.Element("domain")
    root.set("type", s["type"])
    sub(root, "name", name)
    sub(root, "uuid", uuid)
    if s.get("title"):
        sub(root, "title", s["title"])
    if s.get("description"):
        sub(root, "description", s["description"])
    mark_managed(root, "domain")
    if s.get("metadata"):
        set_user_metadata(root, s["metadata"])
    sub(root, "memory", s["memory_mib"] * 1024, unit="KiB")
    sub(root, "currentMemory", s["current_memory_mib"] * 1024, unit="KiB")
    sub(root, "vcpu", s["vcpus"])
    os_el = sub(root, "os", firmware="efi" if s["firmware"] == "uefi" else None)
    sub(os_el, "type", "hvm", arch=s.get("arch"), machine=s.get("machine"))
    if s.get("kernel"):
        sub(os_el, "kernel", s["kernel"])
        if s.get("initrd"):
            sub(os_el, "initrd", s["initrd"])
        if s.get("cmdline"):
            sub(os_el, "cmdline", s["cmdline"])
    if s["firmware"] == "uefi" and s.get("secure_boot") is not None:
        # libvirt's firmware autoselection picks the firmware descriptor (/usr/share/qemu/firmware) with
        # these features; libvirt writes them in this order
        fw = sub(os_el, "firmware")
        if s["secure_boot"]:
            sub(fw, "feature", enabled="yes", name="enrolled-keys")
        sub(fw, "feature", enabled="yes" if s["secure_boot"] else "no", name="secure-boot")
    for dev in s.get("boot") or []:
        sub(os_el, "boot", dev=dev)
    secure_boot = s["firmware"] == "uefi" and s.get("secure_boot")
    if s.get("features") or secure_boot:
        feats = sub(root, "features")
        for f in s.get("features") or []:
            sub(feats, f)
        if secure_boot:
            sub(feats, "smm", state="on")
    if s.get("cpu"):
        cpu = sub(root, "cpu", mode=s["cpu"]["mode"])
        if s["cpu"].get("model"):
            sub(cpu, "model", s["cpu"]["model"])
    for action in ("on_poweroff", "on_reboot", "on_crash"):
        if s.get(action):
            sub(root, action, s[action])
    devices = sub(root, "devices")
    for d in s["disks"]:
        _disk(devices, d)
    if s.get("cloud_init"):
        seed = _seed_disk(name, s)
        _disk(devices, seed)
        mark_seed(root, seed_hash(seed_files(name, s["cloud_init"])), seed["pool"], seed["volume"])
    lease = lease_settings(s, uuid, lock_config)
    if lease:
        key, lockspace, path = lease
        el = sub(devices, "lease")
        sub(el, "lockspace", lockspace)
        sub(el, "key", key)
        sub(el, "target", path=path)
    for nic in s["interfaces"]:
        el = sub(devices, "interface", type_="network" if nic.get("network") else "bridge")
        if nic.get("mac"):
            sub(el, "mac", address=nic["mac"])
        if nic.get("network"):
            sub(el, "source", network=nic["network"])
        else:
            sub(el, "source", bridge=nic["bridge"])
        if nic.get("model"):
            sub(el, "model", type_=nic["model"])
    if s.get("graphics"):
        g = s["graphics"]
        if g.get("port") is not None:
            sub(devices, "graphics", type_=g["type"], port=g["port"], autoport="no", listen=g.get("listen"))
        else:
            sub(devices, "graphics", type_=g["type"], autoport="yes", listen=g.get("listen"))
    if s["serial_console"]:
        serial = sub(devices, "serial", type_="pty")
        sub(serial, "target", port="0")
        console = sub(devices, "console", type_="pty")
        sub(console, "target", type_="serial", port="0")
    channels = list(s["channels"])
    if s["guest_agent"] and not any(c["name"] == GUEST_AGENT_CHANNEL for c in channels):
        channels.insert(0, {"name": GUEST_AGENT_CHANNEL, "type": "unix"})
    for c in channels:
        el = sub(devices, "channel", type_=c["type"])
        sub(el, "target", type_="virtio", name=c["name"])
    if s.get("tpm"):
        t = s["tpm"]
        el = sub(devices, "tpm", model=t["model"])
        sub(
            el,
            "backend",
            type_="emulator",
            version=t["version"],
            persistent_state="yes" if t["persistent_state"] else None,
        )
    return root


def _disk(devices, d):
    el = sub(devices, "disk", type_=d["type"], device=d["device"])
    sub(el, "driver", name="qemu", type_=d.get("format"), cache=d.get("cache"))
    if d["type"] == "file" and d.get("path"):
        sub(el, "source", file=d["path"])
    elif d["type"] == "block":
        sub(el, "source", dev=d["path"])
    elif d["type"] == "volume":
        sub(el, "source", pool=d["pool"], volume=d["volume"])
    sub(el, "target", dev=d["target"], bus=d["bus"])
    if d.get("boot_order") is not None:
        sub(el, "boot", order=d["boot_order"])
    if d["readonly"]:
        sub(el, "readonly")
    if d["shareable"]:
        sub(el, "shareable")
    return el
