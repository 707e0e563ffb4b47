# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Safe XML parsing, canonical form and intent-based drift detection for libvirt XML.

Intent-based comparison: only what the user specified (the *desired* tree) is compared against
libvirt's XML (the *actual* tree). libvirt fills in a lot (a UUID, MAC and PCI/drive addresses,
aliases, controllers, default models, generated paths); none of that counts as a difference unless
the desired tree names it. Devices the user manages (disks, interfaces, leases, ...) are compared as
whole sets, so removing one from the definition is a difference too.

:func:`project` gives the actual tree "seen through" the desired one; comparing that projection
with the desired tree is the drift test, and the two rendered texts are the Ansible diff.
"""

from __future__ import annotations

import copy
import re
import uuid as uuidlib

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import HAS_LXML, etree
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.units import to_bytes


# --------------------------------------------------------------------------- parsing
def _parser():
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=True,
        remove_comments=True,
        remove_pis=True,
    )


# libvirt refuses an RPC string over 32 MiB; no libvirt object's XML comes near it
MAX_XML_BYTES = 32 * 2**20
_DOCTYPE_RE = re.compile(r"<!DOCTYPE", re.IGNORECASE)
_ENTITY_RE = re.compile(r"<!ENTITY\s+%?\s*\S+\s+(SYSTEM|PUBLIC)\b", re.IGNORECASE)


def parse_xml(text, root_tag=None, what="XML"):
    """Parse ``text`` safely and return its root element.

    Entities are never expanded, nothing is fetched from the network, no DTD is loaded. A document
    declaring an external entity (or any DOCTYPE: libvirt XML never needs one) is refused.
    Raises ValidationError with a message naming ``what``.
    """
    if not HAS_LXML:
        raise ValidationError("the lxml Python library is required")
    if text is None or not str(text).strip():
        raise ValidationError("{} is empty".format(what))
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if len(text) > MAX_XML_BYTES:
        raise ValidationError(
            "{} is {} characters long; more than {} is refused".format(what, len(text), MAX_XML_BYTES)
        )
    if _ENTITY_RE.search(text):
        raise ValidationError(
            "{} declares an external entity (<!ENTITY ... SYSTEM/PUBLIC>), which is refused".format(what)
        )
    if _DOCTYPE_RE.search(text):
        raise ValidationError("{} has a DOCTYPE declaration, which is refused (libvirt XML needs none)".format(what))
    text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text)
    try:
        root = etree.fromstring(text, _parser())
    except etree.XMLSyntaxError as exc:
        raise ValidationError("{} is not well-formed: {}".format(what, exc)) from None
    for node in root.iter():
        if isinstance(node, etree._Entity):
            raise ValidationError("{} uses an entity reference ({}), which is refused".format(what, node))
    if root_tag is not None and local(root.tag) != root_tag:
        raise ValidationError("{} must have a <{}> root element, not <{}>".format(what, root_tag, local(root.tag)))
    return root


def local(tag):
    """Local name of an element tag ('{ns}name' -> 'name')."""
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def elements(el, tag=None):
    """Element children of ``el`` (optionally only those with local name ``tag``)."""
    return [c for c in el if isinstance(c.tag, str) and (tag is None or local(c.tag) == tag)]


def to_text(el, pretty=True):
    """Serialise an element (or None -> '')."""
    if el is None:
        return ""
    el = copy.deepcopy(el)
    _strip_whitespace(el)
    return etree.tostring(el, pretty_print=pretty, encoding="unicode")


def _strip_whitespace(el):
    for node in el.iter():
        if not isinstance(node.tag, str):
            continue
        if node.text is not None and not node.text.strip():
            node.text = None
        if node.tail is not None and not node.tail.strip():
            node.tail = None
        elif node.tail is not None:
            node.tail = node.tail.strip()


def canonical(el):
    """A canonical copy: whitespace stripped, text trimmed, attributes sorted, units normalised."""
    el = normalize(el)
    return _sorted_copy(el)


def canonical_text(el):
    return to_text(canonical(el)) if el is not None else ""


def _sorted_copy(el, parent=None):
    if parent is None:
        new = etree.Element(el.tag, nsmap=el.nsmap)
    else:
        new = etree.SubElement(parent, el.tag, nsmap=el.nsmap)
    for k in sorted(el.attrib.keys()):
        new.set(k, el.get(k))
    if el.text is not None and el.text.strip():
        new.text = el.text.strip()
    for c in elements(el):
        _sorted_copy(c, new)
    return new


def structure(el):
    """A hashable structural form (namespace URIs, not prefixes) used for equality."""
    if el is None:
        return None
    text = (el.text or "").strip()
    return (
        el.tag,
        tuple(sorted(el.attrib.items())),
        text,
        tuple(structure(c) for c in elements(el)),
    )


# --------------------------------------------------------------------------- normalisation
MEMORY_TAGS = ("memory", "currentMemory", "maxMemory", "hard_limit", "soft_limit", "swap_hard_limit", "min_guarantee")


def normalize(el):
    """Copy of ``el`` with memory sizes in KiB, MAC addresses lower case, UUIDs in canonical form, and
    libvirt's own defaults and path normalisations applied (:data:`LIBVIRT_NORMALISATIONS`)."""
    el = copy.deepcopy(el)
    _strip_whitespace(el)
    for root_tag, _what, rule in LIBVIRT_NORMALISATIONS:
        if local(el.tag) == root_tag:
            rule(el)
    for node in el.iter():
        if not isinstance(node.tag, str):
            continue
        name = local(node.tag)
        parent = node.getparent()
        if name in MEMORY_TAGS and parent is not None and local(parent.tag) in ("domain", "memtune"):
            if node.text and node.text.strip().isdigit():
                node.text = str(to_bytes(node.text.strip(), node.get("unit", "KiB")) // 1024)
                node.set("unit", "KiB")
        if name == "mac" and node.get("address"):
            node.set("address", node.get("address").lower())
        if name == "uuid" and node.text and node.getparent() is not None and local(node.getparent().tag) == "domain":
            try:
                node.text = str(uuidlib.UUID(node.text.strip()))
            except ValueError:
                pass
    return el


# --------------------------------------------------------------------------- libvirt's defaults
# What libvirt writes back differently from what it was given, although it means the same: a default it
# leaves out, a path it sanitises, a value it derives and overrides. Each rule rewrites a document (the
# user's and libvirt's alike) into the form libvirt writes, so both compare equal. Confirmed in libvirt's
# own parser and formatter (src/conf/network_conf.c, src/conf/storage_conf.c) and by defining the documents
# on libvirt 9.0 and reading them back.
def _sanitize_path(path):
    """libvirt's virFileSanitizePath (src/util/virfile.c): repeated slashes collapsed and a trailing slash
    removed; a leading "//" (valid POSIX) kept, "///" made "/"; a URI left as it is."""
    if not path:
        return path
    uri = path.find("://")
    if uri >= 0 and path.find("/") > uri:
        return path
    out = ""
    i = 0
    if path.startswith("//") and path[2:3] != "/":
        out, i = "//", 2
    while i < len(path):
        if path[i] != "/":
            out += path[i]
            i += 1
            continue
        while i < len(path) and path[i] == "/":
            i += 1
        if out and i == len(path):
            break
        out += "/"
    return out


def _network_ipv6_default(root):
    # virNetworkDefFormatBuf writes ipv6='yes' only; 'no' is the default and is never written
    if (root.get("ipv6") or "").strip().lower() == "no":
        del root.attrib["ipv6"]


def _pool_permissions_unset(root):
    # virStorageDefParsePerms reads an owner or group of -1 as "not set", and the formatter leaves unset
    # values (and a <permissions> with none set) out
    for target in elements(root, "target"):
        for perms in elements(target, "permissions"):
            for tag in ("owner", "group"):
                for node in elements(perms, tag):
                    if (node.text or "").strip() == "-1":
                        perms.remove(node)
            if not elements(perms) and not (perms.text or "").strip():
                target.remove(perms)


def _pool_paths(root):
    # virStoragePoolDefParseSource and virStoragePoolDefParseXML pass <source><dir path> and
    # <target><path> through virFileSanitizePath
    for source in elements(root, "source"):
        for d in elements(source, "dir"):
            if d.get("path"):
                d.set("path", _sanitize_path(d.get("path")))
    for target in elements(root, "target"):
        for p in elements(target, "path"):
            if p.text and p.text.strip():
                p.text = _sanitize_path(p.text.strip())


# a pool type whose target path libvirt derives from the source name, whatever <target><path> says
_DERIVED_TARGET = {"logical": "/dev/{}", "zfs": "/dev/zvol/{}"}


def _pool_derived_target(root):
    # virStoragePoolDefParseXML: a logical pool's target is /dev/<source name>, a zfs pool's
    # /dev/zvol/<source name>; the source name defaults to the pool's name
    pattern = _DERIVED_TARGET.get(root.get("type"))
    if pattern is None:
        return
    source_name = None
    for source in elements(root, "source"):
        for n in elements(source, "name"):
            source_name = (n.text or "").strip() or None
    if source_name is None:
        names = elements(root, "name")
        source_name = (names[0].text or "").strip() if names else None
    if not source_name:
        return
    for target in elements(root, "target"):
        for p in elements(target, "path"):
            p.text = pattern.format(source_name)


_CHARDEVS = ("channel", "serial", "console", "parallel")


def _domain_unix_chardev_source(root):
    # a unix character device whose <source> names no path: QEMU makes the socket path when the guest
    # starts, and the inactive definition leaves the pathless <source mode='bind'/> out
    for devices in elements(root, "devices"):
        for dev in elements(devices):
            if local(dev.tag) in _CHARDEVS and dev.get("type") == "unix":
                for src in elements(dev, "source"):
                    if not src.get("path") and not elements(src):
                        dev.remove(src)


def _domain_spice_auto_ports(root):
    # a spice console's port and tlsPort of -1 ("pick one when it starts") are not written
    for devices in elements(root, "devices"):
        for g in elements(devices, "graphics"):
            if g.get("type") == "spice":
                for attr in ("port", "tlsPort"):
                    if g.get(attr) == "-1":
                        del g.attrib[attr]


def _domain_lease_offset_zero(root):
    # a <lease>'s target offset='0' is the default and is not written (offset is written only when set)
    for devices in elements(root, "devices"):
        for lease in elements(devices, "lease"):
            for target in elements(lease, "target"):
                if (target.get("offset") or "").strip() == "0":
                    del target.attrib["offset"]


def _domain_autoselected_firmware(root):
    # firmware autoselection (<os firmware='efi'>): a running guest's XML holds the pflash <loader> and the
    # <nvram> libvirt chose instead of the firmware attribute (libvirt 9.0, qemuFirmwareFillDomain); the
    # inactive definition keeps the attribute. A pflash loader is UEFI's, so it means firmware='efi'.
    for os_el in elements(root, "os"):
        if os_el.get("firmware"):
            continue
        if any(loader.get("type") == "pflash" for loader in elements(os_el, "loader")):
            os_el.set("firmware", "efi")


def _enabled(os_el, feature):
    for fw in elements(os_el, "firmware"):
        for f in elements(fw, "feature"):
            if f.get("name") == feature:
                return f.get("enabled") == "yes"
    return None


def as_running(desired, live):
    """``desired`` as the live XML of a running guest can show it (``live``, both domains).

    A guest migrated in keeps in its live XML only the pflash ``<loader>`` and ``<nvram>`` libvirt chose when
    it started, without the ``<os><firmware>`` features they were chosen by (libvirt 9.0's migratable XML).
    Where the live XML has no ``<firmware>`` and its loader is Secure Boot's (``secure='yes'``) exactly when
    the desired features ask for Secure Boot, those features are what runs: ``desired`` without them.
    Otherwise ``desired`` as it is."""
    d_os, l_os = elements(desired, "os"), elements(live, "os")
    if not d_os or not l_os or not elements(d_os[0], "firmware") or elements(l_os[0], "firmware"):
        return desired
    loaders = [x for x in elements(l_os[0], "loader") if x.get("type") == "pflash"]
    if not loaders or (loaders[0].get("secure") == "yes") != bool(_enabled(d_os[0], "secure-boot")):
        return desired
    out = copy.deepcopy(desired)
    os_el = elements(out, "os")[0]
    for fw in elements(os_el, "firmware"):
        os_el.remove(fw)
    return out


# (root element, what libvirt does, the rule applied to a document of that root)
LIBVIRT_NORMALISATIONS = (
    ("domain", "a <lease>'s target offset='0' is left out", _domain_lease_offset_zero),
    (
        "domain",
        "a running guest's autoselected firmware is its pflash <loader>, without <os firmware='efi'>",
        _domain_autoselected_firmware,
    ),
    ("domain", "a unix chardev's <source> without a path is left out", _domain_unix_chardev_source),
    ("domain", "a spice console's port='-1' and tlsPort='-1' are left out", _domain_spice_auto_ports),
    ("network", "<network ipv6='no'> is the default and is never written", _network_ipv6_default),
    ("pool", "<owner>-1</owner>, <group>-1</group> mean unset and are left out", _pool_permissions_unset),
    ("pool", "<source><dir path> and <target><path> are sanitised (no trailing or double slash)", _pool_paths),
    ("pool", "a logical (zfs) pool's target path is /dev/(zvol/)<source name>", _pool_derived_target),
)


# --------------------------------------------------------------------------- values libvirt computes
def _kib(node, default_unit="KiB"):
    text = (node.text or "").strip() if node is not None else ""
    if not text.isdigit():
        return None
    return to_bytes(text, node.get("unit", default_unit)) // 1024


def _numa_kib(root):
    total = 0
    for cpu in elements(root, "cpu"):
        for numa in elements(cpu, "numa"):
            for cell in elements(numa, "cell"):
                if cell.get("memory", "").strip().isdigit():
                    total += to_bytes(cell.get("memory").strip(), cell.get("unit", "KiB")) // 1024
    return total


def _hotplug_kib(root):
    total = 0
    for devices in elements(root, "devices"):
        for mem in elements(devices, "memory"):
            for target in elements(mem, "target"):
                for size in elements(target, "size"):
                    total += _kib(size) or 0
    return total


def computed_memory(desired):
    """The ``<memory>`` (KiB) libvirt stores for the domain ``desired`` when it has memory devices, or None.

    virDomainDefPostParseMemory (src/conf/domain_postparse.c): with guest NUMA cells and a define that
    may update the ABI (QEMU's), the total is the cells' memory plus every memory device's size (DIMMs,
    NVDIMMs, virtio-mem...), whatever ``<memory>`` said; ``<currentMemory>`` above that total (or 0) is
    lowered to it. Without NUMA cells ``<memory>`` is kept as it is (and already counts the devices)."""
    if local(desired.tag) != "domain":
        return None
    hotplug = _hotplug_kib(desired)
    numa = _numa_kib(desired)
    if not hotplug or not numa:
        return None
    return numa + hotplug


def _as_libvirt_computes(desired, actual):
    """``desired`` with ``<memory>``/``<currentMemory>`` written as libvirt computes them, where
    ``actual`` holds exactly that computed value (a driver that keeps the value as given still compares
    with the value as given)."""
    total = computed_memory(desired)
    if total is None or actual is None:
        return desired
    out = desired
    for tag in ("memory", "currentMemory"):
        d = elements(out, tag)
        a = elements(actual, tag)
        if not d or not a:
            continue
        dv, av = _kib(d[0]), _kib(a[0])
        if dv is None or av is None or dv == av:
            continue
        want = total if tag == "memory" else (total if dv > total or dv == 0 else dv)
        if av == want:
            if out is desired:
                out = copy.deepcopy(desired)
            node = elements(out, tag)[0]
            node.text = str(want)
            node.set("unit", "KiB")
    return out


# --------------------------------------------------------------------------- secrets
def holds_secrets(el):
    """Whether ``el`` holds values libvirt only returns when asked for them (VIR_DOMAIN_XML_SECURE): a
    ``passwd`` attribute (a graphics console's password) or a network disk's ``<cookies>``."""
    if el is None:
        return False
    for node in el.iter():
        if not isinstance(node.tag, str):
            continue
        if node.get("passwd") is not None or local(node.tag) == "cookies":
            return True
    return False


# --------------------------------------------------------------------------- projection
# How children are paired between desired and actual: (parent, child) -> key function.
def _attr_of(child_tag, attr):
    def key(el):
        sub = elements(el, child_tag)
        return sub[0].get(attr) if sub else None

    return key


def _texts(*tags):
    def key(el):
        vals = []
        for t in tags:
            sub = elements(el, t)
            vals.append((sub[0].text or "").strip() if sub else None)
        return tuple(vals) if any(v is not None for v in vals) else None

    return key


KEYS = {
    ("devices", "disk"): _attr_of("target", "dev"),
    ("devices", "interface"): _attr_of("mac", "address"),
    ("devices", "controller"): lambda el: (el.get("type"), el.get("index")) if el.get("index") is not None else None,
    ("devices", "channel"): _attr_of("target", "name"),
    ("devices", "lease"): _texts("lockspace", "key"),
    ("devices", "filesystem"): _attr_of("target", "dir"),
    ("devices", "graphics"): lambda el: el.get("type"),
    ("firmware", "feature"): lambda el: el.get("name"),
}

# Child tags compared as whole sets under a parent, even when the desired tree has none of them.
EXACT_ALWAYS = {
    "devices": {
        "disk",
        "interface",
        "lease",
        "hostdev",
        "filesystem",
        "channel",
        "graphics",
        "redirdev",
        "smartcard",
        "rng",
        "tpm",
        "sound",
        "shmem",
    },
}
# Child tags compared as whole sets only when the desired tree has at least one of them
# (libvirt adds some on its own: a console for a serial port, video for graphics, a boot device).
EXACT_IF_GIVEN = {
    "devices": {"serial", "console", "video", "input", "parallel", "watchdog", "memballoon"},
    "os": {"boot"},
    "metadata": None,  # None: every child tag
}
# Devices libvirt adds on its own to a set the user gives (the PS/2 mouse and keyboard of an x86 guest):
# not a difference when the desired set lacks them.
IMPLICIT = {
    ("devices", "input"): lambda el: el.get("bus") == "ps2" and el.get("type") in ("mouse", "keyboard"),
}
# Never shown for devices libvirt has that the user does not manage.
VOLATILE_CHILDREN = {"alias", "address"}
VOLATILE_BY_PARENT = {"interface": {"target"}}

# Attributes whose actual value counts as equal to a different desired value.
_MACHINE_ALIASES = {"pc": "pc-i440fx-", "q35": "pc-q35-"}


def _equivalent(tag, attr, desired, actual):
    if desired == actual:
        return True
    if tag == "type" and attr == "machine" and actual is not None:
        prefix = _MACHINE_ALIASES.get(desired)
        return bool(prefix and actual.startswith(prefix))
    return False


def _strip_volatile(el):
    el = copy.deepcopy(el)
    for node in list(el.iter()):
        if not isinstance(node.tag, str):
            continue
        parent = node.getparent()
        if parent is None:
            continue
        drop = VOLATILE_CHILDREN | VOLATILE_BY_PARENT.get(local(parent.tag), set())
        if local(node.tag) in drop:
            parent.remove(node)
    return el


def _match(parent_name, d_children, a_children):
    """Pair desired and actual children of one tag. Returns (pairs, unmatched_actual)."""
    tag = local(d_children[0].tag) if d_children else None
    keyfn = KEYS.get((parent_name, tag))
    remaining = list(a_children)
    pairs = []
    pending = []
    for d in d_children:
        k = keyfn(d) if keyfn else None
        found = None
        if k is not None:
            for a in remaining:
                if keyfn(a) == k:
                    found = a
                    break
        if found is not None:
            remaining.remove(found)
            pairs.append([d, found])
        else:
            pairs.append([d, None])
            pending.append(len(pairs) - 1)
    # positional pairing for what keys could not pair
    for idx in pending:
        if not remaining:
            break
        pairs[idx][1] = remaining.pop(0)
    return pairs, remaining


def _is_exact(parent_name, tag, given):
    if tag in EXACT_ALWAYS.get(parent_name, ()):
        return True
    if given and parent_name in EXACT_IF_GIVEN:
        tags = EXACT_IF_GIVEN[parent_name]
        return tags is None or tag in tags
    return False


def project(desired, actual, ignore=()):
    """The actual element seen through the desired one.

    Keeps from ``actual`` the attributes, text and children ``desired`` names (recursively) plus,
    for device sets the user manages, the devices libvirt has that the desired tree lacks.
    ``ignore``: local tag names whose content is not compared (e.g. ``cpu`` for a live XML).
    Both inputs should be :func:`normalize`d. Returns None when ``actual`` is None.
    """
    if actual is None:
        return None
    return _project(desired, actual, set(ignore), None)


def _project(d, a, ignore, parent):
    out = etree.Element(a.tag, nsmap=a.nsmap) if parent is None else etree.SubElement(parent, a.tag, nsmap=a.nsmap)
    name = local(d.tag)
    if name in ignore:
        # not compared: show what the user asked for
        for k, v in d.attrib.items():
            out.set(k, v)
        out.text = d.text
        for c in elements(d):
            out.append(copy.deepcopy(c))
        return out
    for k, v in d.attrib.items():
        if k in a.attrib:
            av = a.get(k)
            out.set(k, v if _equivalent(name, k, v, av) else av)
    dtext = (d.text or "").strip()
    if dtext:
        out.text = (a.text or "").strip()
    # group by tag, keeping the desired order of first appearance
    d_groups = []
    seen = {}
    for c in elements(d):
        if c.tag not in seen:
            seen[c.tag] = []
            d_groups.append(c.tag)
        seen[c.tag].append(c)
    a_by_tag = {}
    for c in elements(a):
        a_by_tag.setdefault(c.tag, []).append(c)
    for tag in d_groups:
        pairs, extra = _match(name, seen[tag], a_by_tag.get(tag, []))
        for dc, ac in pairs:
            if ac is not None:
                _project(dc, ac, ignore, out)
        if _is_exact(name, local(tag), True):
            implicit = IMPLICIT.get((name, local(tag)))
            for ac in extra:
                if implicit is None or not implicit(ac):
                    out.append(_strip_volatile(ac))
    for tag, acs in a_by_tag.items():
        if tag in seen:
            continue
        if _is_exact(name, local(tag), False):
            for ac in acs:
                out.append(_strip_volatile(ac))
    return out


class Drift:
    """Result of :func:`compare`: ``changed``, ``before``/``after`` texts, ``differences`` (paths)."""

    def __init__(self, changed, before, after, differences):
        self.changed = changed
        self.before = before
        self.after = after
        self.differences = differences


def compare(desired, actual, ignore=(), texts=True):
    """Intent-based drift between a desired and an actual element (either may be None). ``texts``: also
    the before/after texts of a diff (otherwise None: they cost more than the comparison)."""
    d = normalize(desired) if desired is not None else None
    a = normalize(actual) if actual is not None else None
    if d is None:
        return Drift(a is not None, canonical_text(a) if texts else None, "", ["/"] if a is not None else [])
    if a is None:
        return Drift(True, "", canonical_text(d) if texts else None, ["/" + local(d.tag)])
    d = _as_libvirt_computes(d, a)
    p = project(d, a, ignore)
    diffs = differences(d, p)
    if not texts:
        return Drift(bool(diffs), None, None, diffs)
    before = to_text(_sorted_copy(p))
    after = to_text(_sorted_copy(d))
    return Drift(bool(diffs), before, after, diffs)


def differences(desired, projected, path=""):
    """Paths (like /domain/devices/disk[2]) where ``projected`` differs from ``desired``."""
    out = []
    here = "{}/{}".format(path, local(desired.tag))
    if projected is None:
        return [here]
    if desired.tag != projected.tag:
        return [here]
    if sorted(desired.attrib.items()) != sorted(projected.attrib.items()):
        keys = set(desired.attrib) | set(projected.attrib)
        for k in sorted(keys):
            if desired.get(k) != projected.get(k):
                out.append("{}/@{}".format(here, local(k)))
    if (desired.text or "").strip() != (projected.text or "").strip():
        out.append(here + "/text()")
    dch = elements(desired)
    pch = elements(projected)
    # projection keeps matched children in desired order, with extras after their group
    p_by_tag = {}
    for c in pch:
        p_by_tag.setdefault(c.tag, []).append(c)
    d_by_tag = {}
    for c in dch:
        d_by_tag.setdefault(c.tag, []).append(c)
    for tag, group in d_by_tag.items():
        pgroup = p_by_tag.get(tag, [])
        for i, dc in enumerate(group):
            pc = pgroup[i] if i < len(pgroup) else None
            if pc is None:
                out.append("{}/{}[{}] (missing)".format(here, local(tag), i + 1))
            elif structure(dc) != structure(pc):
                sub = differences(dc, pc, here)
                if len(group) > 1 or len(pgroup) > 1:
                    plain = "{}/{}".format(here, local(tag))
                    indexed = "{}/{}[{}]".format(here, local(tag), i + 1)
                    sub = [p.replace(plain, indexed, 1) for p in sub]
                out.extend(sub)
        for j in range(len(group), len(pgroup)):
            out.append("{}/{}[{}] (not in the definition)".format(here, local(tag), j + 1))
    for tag, pgroup in p_by_tag.items():
        if tag not in d_by_tag:
            for j in range(len(pgroup)):
                out.append("{}/{}[{}] (not in the definition)".format(here, local(tag), j + 1))
    return out
