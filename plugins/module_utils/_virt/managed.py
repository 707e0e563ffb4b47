# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The managed-object mark: ``<metadata><lsv:managed .../></metadata>`` in the collection's namespace.

A later prune touches only objects carrying this mark. Works for any libvirt object whose XML has a
``<metadata>`` element (domains, networks); ``is_managed`` reads it back.
"""

from __future__ import annotations

import copy

from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, etree, local

MANAGED_NS = "https://lockstep.virt/ns/managed/1"
MANAGED_PREFIX = "lsv"
METADATA_NS = "https://lockstep.virt/ns/metadata/1"
METADATA_PREFIX = "lsvmeta"
MANAGED_BY = "lockstep.virt"

# Where <metadata> goes when an object has none: after these children (libvirt reorders anyway).
_METADATA_AFTER = ("name", "uuid", "genid", "title", "description")


def managed_tag():
    return "{%s}managed" % MANAGED_NS


def metadata_element(root, create=True):
    """The root's <metadata> element (created, in the conventional place, when missing)."""
    found = elements(root, "metadata")
    if found:
        return found[0]
    if not create:
        return None
    md = etree.Element("metadata")
    index = 0
    for i, child in enumerate(elements(root)):
        if local(child.tag) in _METADATA_AFTER:
            index = i + 1
    root.insert(index, md)
    return md


def mark_managed(root, kind=None):
    """Add (or refresh) the managed mark in ``root``'s <metadata>; returns ``root``."""
    md = metadata_element(root)
    for old in md.findall(managed_tag()):
        md.remove(old)
    mark = etree.SubElement(md, managed_tag(), nsmap={MANAGED_PREFIX: MANAGED_NS})
    mark.set("by", MANAGED_BY)
    if kind:
        mark.set("kind", kind)
    return root


def is_managed(root):
    """True when ``root`` (a libvirt object's XML element) carries the collection's mark."""
    md = metadata_element(root, create=False)
    return md is not None and md.find(managed_tag()) is not None


def compared_mark(desired, existing):
    """``desired`` as it is compared with ``existing``: without the managed mark when ``existing`` is an
    object that carries none (one defined by other means, adopted as it is). The mark is written when the
    collection (re)defines the object for another difference; until then the object is left as it is - and,
    unmarked, is never pruned."""
    if desired is None or existing is None or is_managed(existing) or not is_managed(desired):
        return desired
    out = copy.deepcopy(desired)
    md = metadata_element(out, create=False)
    for old in md.findall(managed_tag()):
        md.remove(old)
    if not len(md) and not (md.text or "").strip():
        out.remove(md)
    return out


def set_user_metadata(root, values):
    """Store a flat dict of strings in <metadata> under the collection's metadata namespace."""
    md = metadata_element(root)
    tag = "{%s}metadata" % METADATA_NS
    for old in md.findall(tag):
        md.remove(old)
    if not values:
        return root
    holder = etree.SubElement(md, tag, nsmap={METADATA_PREFIX: METADATA_NS})
    for key in sorted(values):
        item = etree.SubElement(holder, "{%s}item" % METADATA_NS)
        item.set("name", str(key))
        item.text = "" if values[key] is None else str(values[key])
    return root


def get_user_metadata(root):
    md = metadata_element(root, create=False)
    if md is None:
        return {}
    holder = md.find("{%s}metadata" % METADATA_NS)
    if holder is None:
        return {}
    return dict((i.get("name"), i.text or "") for i in holder.findall("{%s}item" % METADATA_NS))
