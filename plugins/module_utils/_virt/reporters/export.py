# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host's objects read back as the options ``lockstep.virt.apply`` takes: what their definitions say as
a structured ``spec`` where the spec can say all of it, their secrets taken out, and which of them a
name filter selects.

Each ``*_spec`` function reads one inactive definition and returns the ``spec`` of its single-object module,
or raises :class:`NoSpec` naming the first part of the definition a spec cannot express (an element or
attribute the spec builder never writes and libvirt does not add on its own). A spec returned here is only
a candidate: ``managers/export.py`` keeps it only when the kind's manager finds nothing to change with it.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

from ansible_collections.lockstep.virt.plugins.module_utils._virt.cloudinit import seed_of
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managed import (
    METADATA_NS,
    get_user_metadata,
    managed_tag,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.domain import GUEST_AGENT_CHANNEL
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.network import FORWARD_MODES
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.pool import POOL_TYPES
from ansible_collections.lockstep.virt.plugins.module_utils._virt.units import MIB
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, local, to_bytes

# The options of lockstep.virt.apply, in the order it applies them.
EXPORT_KINDS = ("networks", "pools", "volumes", "domains")
SECRET_ATTRS = ("passwd", "password")
SECRET_ELEMENTS = ("passwd", "password", "cookies")
GENERATED_BRIDGE = re.compile(r"^virbr[0-9]+$")  # how libvirt names a network's bridge when it is given none


class NoSpec(Exception):
    """The definition holds something a spec cannot express (the message names it)."""


# --------------------------------------------------------------------------- filters and secrets
def names_filter(names):
    """{kind option: [glob, ...] or None} from the module's ``names`` (a list for every kind, or a dict of
    lists per kind); None: every name. Raises ValidationError."""
    if names is None:
        return dict((k, None) for k in EXPORT_KINDS)
    if isinstance(names, (list, str)):
        names = [names] if isinstance(names, str) else names
        return dict((k, _globs(names, "names")) for k in EXPORT_KINDS)
    if not isinstance(names, dict):
        raise ValidationError("names must be a list of names or patterns, or a dictionary of such lists by kind")
    unknown = sorted(set(names) - set(EXPORT_KINDS))
    if unknown:
        raise ValidationError(
            "names: unknown kinds {} (known: {})".format(", ".join(map(str, unknown)), ", ".join(EXPORT_KINDS))
        )
    out = {}
    for kind in EXPORT_KINDS:
        value = names.get(kind)
        out[kind] = None if value is None else _globs([value] if isinstance(value, str) else value, "names." + kind)
    return out


def _globs(values, what):
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ValidationError("{} must be a list of names or shell-style patterns".format(what))
    return list(values)


def selected(patterns, name):
    """Whether ``name`` matches one of ``patterns`` (None: every name)."""
    return patterns is None or any(fnmatchcase(name, p) for p in patterns)


def drop_secrets(root):
    """Remove every password (a ``passwd`` or ``password`` attribute, a ``<passwd>``/``<password>`` element)
    and a disk's ``<cookies>`` from ``root`` in place; returns what was removed, as element paths."""
    dropped = []
    for node in list(root.iter()):
        if not isinstance(node.tag, str):
            continue
        for attr in list(node.attrib):
            if local(attr).lower() in SECRET_ATTRS:
                del node.attrib[attr]
                dropped.append("{}/@{}".format(_path(node), local(attr)))
        parent = node.getparent()
        if parent is not None and local(node.tag).lower() in SECRET_ELEMENTS:
            dropped.append(_path(node))
            parent.remove(node)
    return dropped


def _path(node):
    parts = []
    while node is not None:
        parts.append(local(node.tag))
        node = node.getparent()
    return "/" + "/".join(reversed(parts))


# --------------------------------------------------------------------------- reading helpers
def _only(el, attrs=(), children=(), what=None):
    """Refuse ``el`` when it is missing or has attributes or child elements other than those named."""
    if el is None:
        raise NoSpec("{} is missing".format(what or "an element the spec needs"))
    what = what or _path(el)
    for attr in el.attrib:
        if local(attr) not in attrs:
            raise NoSpec("{}/@{}".format(what, local(attr)))
    for child in elements(el):
        if local(child.tag) not in children:
            raise NoSpec("{}/{}".format(what, local(child.tag)))


def _one(root, tag):
    found = elements(root, tag)
    if len(found) > 1:
        raise NoSpec("{} <{}> elements".format(len(found), tag))
    return found[0] if found else None


def _text(el):
    return (el.text or "").strip() if el is not None else None


def _mib(el, what):
    text = _text(el)
    if not text or not text.isdigit():
        raise NoSpec(what)
    nbytes = to_bytes(text, el.get("unit") or "KiB")
    if nbytes % MIB:
        raise NoSpec("{} is not a whole number of MiB".format(what))
    return nbytes // MIB


def _metadata(root, kind):
    """The user metadata of a definition whose <metadata> holds only the collection's own parts."""
    md = _one(root, "metadata")
    if md is None:
        return {}
    for child in elements(md):
        if child.tag == managed_tag():
            if set(child.attrib) - {"by", "kind"}:
                raise NoSpec("the managed mark's " + ", ".join(sorted(set(child.attrib) - {"by", "kind"})))
            continue
        if child.tag == "{%s}metadata" % METADATA_NS and kind == "domain":
            continue
        raise NoSpec("/{}/metadata/{}".format(kind, local(child.tag)))
    return get_user_metadata(root)


# --------------------------------------------------------------------------- networks
def network_spec(root):
    """The ``spec`` of lockstep.virt.network that defines ``root`` (a network's XML); NoSpec otherwise."""
    _only(root, (), ("name", "uuid", "metadata", "forward", "bridge", "mac", "mtu", "domain", "dns", "ip"), "/network")
    _metadata(root, "network")
    spec = {"forward": "isolated"}
    fwd = _one(root, "forward")
    if fwd is not None:
        _only(fwd, ("mode",))
        spec["forward"] = fwd.get("mode") or "nat"
        if spec["forward"] not in FORWARD_MODES or spec["forward"] == "isolated":
            raise NoSpec("/network/forward/@mode {}".format(spec["forward"]))
    bridge = _one(root, "bridge")
    if bridge is not None:
        _only(bridge, ("name", "stp", "delay"))
        # a virbrN name is libvirt's own pick: left to the host the export is applied to, where it may be taken
        if bridge.get("name") and (spec["forward"] == "bridge" or not GENERATED_BRIDGE.match(bridge.get("name"))):
            spec["bridge"] = bridge.get("name")
    mtu = _one(root, "mtu")
    if mtu is not None:
        _only(mtu, ("size",))
        spec["mtu"] = int(mtu.get("size"))
    dom = _one(root, "domain")
    if dom is not None:
        _only(dom, ("name",))
        spec["domain"] = dom.get("name")
    dns = _one(root, "dns")
    if dns is not None:
        _only(dns, (), ("host",))
        spec["dns_hosts"] = []
        for host in elements(dns, "host"):
            _only(host, ("ip",), ("hostname",))
            spec["dns_hosts"].append(
                {"ip": host.get("ip"), "hostnames": [_text(h) for h in elements(host, "hostname")]}
            )
    for ip in elements(root, "ip"):
        _only(ip, ("address", "prefix", "family"), ("dhcp",))
        family = "ipv6" if (ip.get("family") == "ipv6" or ":" in (ip.get("address") or "")) else "ipv4"
        if family in spec or not (ip.get("prefix") or "").isdigit():
            raise NoSpec("/network/ip ({})".format("a second " + family if family in spec else "no prefix"))
        entry = {"address": ip.get("address"), "prefix": int(ip.get("prefix")), "dhcp_hosts": []}
        dhcp = _one(ip, "dhcp")
        if dhcp is not None:
            _only(dhcp, (), ("range", "host"))
            ranges = elements(dhcp, "range")
            if len(ranges) > 1:
                raise NoSpec("/network/ip/dhcp: several ranges")
            for rng in ranges:
                _only(rng, ("start", "end"))
                entry["dhcp_range"] = {"start": rng.get("start"), "end": rng.get("end")}
            for host in elements(dhcp, "host"):
                _only(host, ("mac", "name", "ip"))
                entry["dhcp_hosts"].append(dict((k, host.get(k)) for k in ("mac", "name", "ip") if host.get(k)))
        spec[family] = entry
    return spec


# --------------------------------------------------------------------------- pools
def pool_spec(root):
    """The ``spec`` of lockstep.virt.pool that defines ``root`` (a pool's XML); NoSpec otherwise."""
    kind = root.get("type") or "dir"
    if kind not in POOL_TYPES:
        raise NoSpec("pool type {}".format(kind))
    _only(root, ("type",), ("name", "uuid", "capacity", "allocation", "available", "source", "target"), "/pool")
    spec = {"type": kind}
    src = _one(root, "source")
    source = {}
    if src is not None:
        _only(src, (), ("host", "device", "dir", "name", "format", "initiator", "auth"))
        for host in elements(src, "host"):
            _only(host, ("name", "port"))
            source.setdefault("hosts", []).append(
                host.get("name") + (":" + host.get("port") if host.get("port") else "")
            )
        for dev in elements(src, "device"):
            _only(dev, ("path",))
            source.setdefault("devices", []).append(dev.get("path"))
        for tag, attr in (("dir", "path"), ("format", "type")):
            el = _one(src, tag)
            if el is not None:
                _only(el, (attr,))
                source[tag] = el.get(attr)
        name = _one(src, "name")
        if name is not None:
            _only(name)
            source["name"] = _text(name)
        init = _one(src, "initiator")
        if init is not None:
            _only(init, (), ("iqn",))
            iqn = _one(init, "iqn")
            _only(iqn, ("name",))
            source["initiator"] = iqn.get("name")
        auth = _one(src, "auth")
        if auth is not None:
            _only(auth, ("type", "username"), ("secret",))
            secret = _one(auth, "secret")
            _only(secret, ("uuid", "usage"))
            source["auth"] = {"type": auth.get("type"), "username": auth.get("username")}
            source["auth"].update(
                (k, secret.get(v)) for k, v in (("secret_uuid", "uuid"), ("secret_usage", "usage")) if secret.get(v)
            )
    if source:
        spec["source"] = source
    target = _one(root, "target")
    if target is not None:
        _only(target, (), ("path", "permissions"))
        path = _one(target, "path")
        if path is not None and kind != "logical":  # a logical pool's target is derived from its source
            spec["path"] = _text(path)
        perms = _one(target, "permissions")
        if perms is not None:
            _only(perms, (), ("mode", "owner", "group", "label"))
            spec["permissions"] = {}
            for key in ("mode", "owner", "group", "label"):
                value = _text(_one(perms, key))
                if value:
                    spec["permissions"][key] = int(value) if key in ("owner", "group") else value
    return spec


# --------------------------------------------------------------------------- domains
DOMAIN_TOP = (
    "name", "uuid", "title", "description", "metadata", "memory", "currentMemory", "vcpu", "os", "features",
    "cpu", "clock", "on_poweroff", "on_reboot", "on_crash", "devices", "resource",
)  # fmt: skip
# Devices libvirt adds to a guest on its own (the spec never names them; their defaults come back).
GENERATED_DEVICES = ("emulator", "controller", "memballoon", "video", "audio", "input")


def domain_spec(root):
    """The ``spec`` of lockstep.virt.domain that defines ``root`` (a domain's XML); NoSpec otherwise."""
    if root.get("type") not in ("qemu", "kvm"):
        raise NoSpec("domain type {}".format(root.get("type")))
    _only(root, ("type",), DOMAIN_TOP, "/domain")
    if seed_of(root)[2]:
        raise NoSpec("a cloud-init seed (its user data is not on the host to read back)")
    spec = {"type": root.get("type"), "metadata": _metadata(root, "domain")}
    for tag, key in (("uuid", "uuid"), ("title", "title"), ("description", "description")):
        if _one(root, tag) is not None:
            spec[key] = _text(_one(root, tag))
    spec["memory"] = _mib(_one(root, "memory"), "/domain/memory")
    if _one(root, "currentMemory") is not None:
        spec["current_memory"] = _mib(_one(root, "currentMemory"), "/domain/currentMemory")
    vcpu = _one(root, "vcpu")
    if vcpu is not None:
        _only(vcpu, ("placement",))
        if vcpu.get("placement") not in (None, "static"):
            raise NoSpec("/domain/vcpu/@placement")
        spec["vcpus"] = int(_text(vcpu))
    _domain_os(root, spec)
    feats = _one(root, "features")
    spec["features"] = []
    if feats is not None:
        for f in elements(feats):
            _only(f)
            spec["features"].append(local(f.tag))
    cpu = _one(root, "cpu")
    if cpu is not None:
        _only(cpu, ("mode", "match", "check", "migratable"), ("model",))
        spec["cpu"] = {"mode": cpu.get("mode") or "custom"}
        if _one(cpu, "model") is not None:
            _only(_one(cpu, "model"), ("fallback",))
            spec["cpu"]["model"] = _text(_one(cpu, "model"))
    clock = _one(root, "clock")
    if clock is not None:
        _only(clock, ("offset",))
        if clock.get("offset") != "utc":
            raise NoSpec("/domain/clock/@offset")
    res = _one(root, "resource")
    if res is not None:
        _only(res, (), ("partition",))
        if _text(_one(res, "partition")) != "/machine":
            raise NoSpec("/domain/resource/partition")
    for action in ("on_poweroff", "on_reboot", "on_crash"):
        if _one(root, action) is not None:
            spec[action] = _text(_one(root, action))
    devices = _one(root, "devices")
    _domain_devices(devices, spec)
    return spec


def _domain_os(root, spec):
    os_el = _one(root, "os")
    if os_el is None:
        raise NoSpec("no /domain/os")
    efi = os_el.get("firmware") == "efi"
    _only(
        os_el,
        ("firmware",),
        ("type", "boot", "kernel", "initrd", "cmdline") + (("loader", "nvram", "firmware") if efi else ()),
    )
    if os_el.get("firmware") not in (None, "efi"):
        raise NoSpec("/domain/os/@firmware")
    spec["firmware"] = "uefi" if efi else "bios"
    typ = _one(os_el, "type")
    _only(typ, ("arch", "machine"))
    if _text(typ) != "hvm":
        raise NoSpec("/domain/os/type {}".format(_text(typ)))
    for attr in ("arch", "machine"):
        if typ.get(attr):
            spec[attr] = typ.get(attr)
    boots = []
    for boot in elements(os_el, "boot"):
        _only(boot, ("dev",))
        boots.append(boot.get("dev"))
    if boots:
        spec["boot"] = boots
    for tag in ("kernel", "initrd", "cmdline"):
        if _one(os_el, tag) is not None:
            spec[tag] = _text(_one(os_el, tag))


def _domain_devices(devices, spec):
    spec.update(disks=[], interfaces=[], channels=[], serial_console=False, guest_agent=False)
    if devices is None:
        return
    serial = console = False
    for dev in elements(devices):
        tag = local(dev.tag)
        if tag in GENERATED_DEVICES:
            if tag == "input" and dev.get("bus") != "ps2":
                raise NoSpec("/domain/devices/input (bus {})".format(dev.get("bus")))
            if tag == "memballoon" and dev.get("model") != "virtio":
                raise NoSpec("/domain/devices/memballoon (model {})".format(dev.get("model")))
        elif tag == "disk":
            spec["disks"].append(_disk(dev))
        elif tag == "interface":
            spec["interfaces"].append(_interface(dev))
        elif tag == "lease":
            _only(dev, (), ("lockspace", "key", "target"))
            _only(_one(dev, "target"), ("path",))
            spec["lease"] = {
                "lockspace": _text(_one(dev, "lockspace")),
                "key": _text(_one(dev, "key")),
                "path": _one(dev, "target").get("path"),
            }
        elif tag == "graphics":
            if "graphics" in spec:
                raise NoSpec("a second /domain/devices/graphics")
            spec["graphics"] = _graphics(dev)
        elif tag == "serial":
            _only(dev, ("type",), ("target", "alias"))
            if dev.get("type") != "pty" or serial or _one(dev, "target").get("port") != "0":
                raise NoSpec("/domain/devices/serial")
            serial = True
        elif tag == "console":
            _only(dev, ("type", "tty"), ("target", "alias"))
            if dev.get("type") != "pty" or console:
                raise NoSpec("/domain/devices/console")
            console = True
        elif tag == "channel":
            _only(dev, ("type",), ("source", "target", "address", "alias"))
            target = _one(dev, "target")
            _only(target, ("type", "name", "state"))
            if target.get("type") != "virtio" or not target.get("name"):
                raise NoSpec("/domain/devices/channel (target type {})".format(target.get("type")))
            source = _one(dev, "source")
            if source is not None and (source.get("path") or elements(source)):
                raise NoSpec("/domain/devices/channel/source (a path of its own)")
            spec["channels"].append({"name": target.get("name"), "type": dev.get("type")})
        else:
            raise NoSpec("/domain/devices/" + tag)
    if serial != console:
        raise NoSpec("/domain/devices/serial without its console" if serial else "/domain/devices/console")
    spec["serial_console"] = serial
    if any(c["name"] == GUEST_AGENT_CHANNEL for c in spec["channels"]):
        spec["guest_agent"] = True  # the same channel: the spec keeps it where it is listed


def _disk(dev):
    _only(dev, ("type", "device"), ("driver", "source", "target", "boot", "readonly", "shareable", "address", "alias"))
    disk = {"type": dev.get("type"), "device": dev.get("device") or "disk"}
    if disk["type"] not in ("file", "block", "volume"):
        raise NoSpec("/domain/devices/disk type {}".format(disk["type"]))
    driver = _one(dev, "driver")
    if driver is not None:
        _only(driver, ("name", "type", "cache"))
        if driver.get("name") not in (None, "qemu"):
            raise NoSpec("/domain/devices/disk/driver/@name")
        if driver.get("type"):
            disk["format"] = driver.get("type")
        if driver.get("cache"):
            disk["cache"] = driver.get("cache")
    source = _one(dev, "source")
    if source is not None:
        _only(source, ("file", "dev", "pool", "volume"))
        if disk["type"] == "volume":
            disk["pool"], disk["volume"] = source.get("pool"), source.get("volume")
        else:
            path = source.get("file") if disk["type"] == "file" else source.get("dev")
            if path:
                disk["path"] = path
    target = _one(dev, "target")
    _only(target, ("dev", "bus"))
    disk["target"], disk["bus"] = target.get("dev"), target.get("bus")
    if _one(dev, "boot") is not None:
        _only(_one(dev, "boot"), ("order",))
        disk["boot_order"] = int(_one(dev, "boot").get("order"))
    disk["readonly"] = _one(dev, "readonly") is not None
    disk["shareable"] = _one(dev, "shareable") is not None
    return disk


def _interface(dev):
    _only(dev, ("type",), ("mac", "source", "model", "address", "alias", "target"))
    kind = dev.get("type")
    if kind not in ("network", "bridge"):
        raise NoSpec("/domain/devices/interface type {}".format(kind))
    source = _one(dev, "source")
    _only(source, (kind,))
    nic = {kind: source.get(kind)}
    mac = _one(dev, "mac")
    if mac is not None:
        _only(mac, ("address",))
        nic["mac"] = mac.get("address")
    model = _one(dev, "model")
    if model is None:
        raise NoSpec("/domain/devices/interface without a model")
    _only(model, ("type",))
    nic["model"] = model.get("type")
    return nic


def _graphics(dev):
    _only(dev, ("type", "port", "autoport", "listen"), ("listen",))
    if dev.get("type") not in ("vnc", "spice"):
        raise NoSpec("/domain/devices/graphics type {}".format(dev.get("type")))
    out = {"type": dev.get("type")}
    if dev.get("autoport") == "no" and dev.get("port"):
        out["port"] = int(dev.get("port"))
    if dev.get("listen"):
        out["listen"] = dev.get("listen")
    for listen in elements(dev, "listen"):
        _only(listen, ("type", "address"))
        if listen.get("type") != "address" or (listen.get("address") or dev.get("listen")) != dev.get("listen"):
            raise NoSpec("/domain/devices/graphics/listen")
    return out


SPEC_OF = {"networks": network_spec, "pools": pool_spec, "domains": domain_spec}

__all__ = ["EXPORT_KINDS", "SPEC_OF", "NoSpec", "drop_secrets", "names_filter", "selected"]
