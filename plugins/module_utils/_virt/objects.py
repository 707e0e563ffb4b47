# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt object kinds (domain, network, storage pool, volume): how each is looked up by name
and how its XML is read, in one place.

Usage::

    net = lookup(conn, NETWORK, "default")       # None when there is no such network
    root = read_xml(net, NETWORK)                 # its persistent definition (inactive=True)
    vol = lookup(pool, VOLUME, "disk.qcow2")      # volumes are looked up in their pool
"""

from __future__ import annotations

from collections import namedtuple

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    error_code,
    from_libvirt_error,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import parse_xml

# lookup_method: the method of the virConnect (or, for volumes, the virStoragePool) finding one by name;
# list_method: the one listing them all;
# not_found: (name, code) of the VIR_ERR_ that means there is none; inactive_flag: the XMLDesc flag of
# the persistent definition (None: one XML only); root_tag: the XML root element; noun: what messages
# call the kind; label: how its manager's messages name one object; xml_context: the message of a
# failed XML read.
Kind = namedtuple("Kind", "lookup_method list_method not_found inactive_flag root_tag noun label xml_context")


def _kind(noun, lookup_method, list_method, not_found, inactive_flag, root_tag=None, label=None, xml_context=None):
    """A Kind by field name; ``root_tag`` defaults to the noun, ``label`` to "<noun> {}", ``xml_context``
    to "cannot read the XML of <label>"."""
    label = label or noun + " {}"
    return Kind(
        lookup_method=lookup_method,
        list_method=list_method,
        not_found=not_found,
        inactive_flag=inactive_flag,
        root_tag=root_tag or noun,
        noun=noun,
        label=label,
        xml_context=xml_context or "cannot read the XML of " + label,
    )


DOMAIN = _kind("domain", "lookupByName", "listAllDomains", ("NO_DOMAIN", 42), "VIR_DOMAIN_XML_INACTIVE", label="{}")
NETWORK = _kind("network", "networkLookupByName", "listAllNetworks", ("NO_NETWORK", 43), "VIR_NETWORK_XML_INACTIVE")
POOL = _kind(
    "storage pool", "storagePoolLookupByName", "listAllStoragePools", ("NO_STORAGE_POOL", 49),
    "VIR_STORAGE_XML_INACTIVE", root_tag="pool",
)  # fmt: skip
VOLUME = _kind(
    "volume",
    "storageVolLookupByName",
    "listAllVolumes",
    ("NO_STORAGE_VOL", 50),
    None,
    xml_context="cannot read volume {}",
)

# What a driver answers for an XMLDesc flag it does not have (test:// has one definition).
_NO_FLAG = (("INVALID_ARG", 8), ("NO_SUPPORT", 3))


def lookup(owner, kind, name):
    """The object of ``kind`` called ``name``, or None when there is none.

    ``owner``: the Connection (or a virConnect), or for a volume the virStoragePool holding it.
    """
    finder = getattr(getattr(owner, "virt", owner), kind.lookup_method)
    try:
        return finder(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == error_code(*kind.not_found):
            return None
        raise from_libvirt_error(exc, "cannot look up {} {}".format(kind.noun, name)) from None


def select(owner, kind, name=None, context=None):
    """The objects of ``kind`` in ``owner``, by name: the one called ``name`` (none when there is no
    such), or all of them. ``context``: the message of a failed listing."""
    if name is not None:
        obj = lookup(owner, kind, name)
        return [obj] if obj is not None else []
    lister = getattr(getattr(owner, "virt", owner), kind.list_method)
    with libvirt_errors(context or "cannot list {}s".format(kind.noun)):
        return sorted(lister(0), key=lambda obj: obj.name())


def read_xml(obj, kind, inactive=True):
    """The XML element of ``obj``: its persistent definition (``inactive``, where the driver has the
    flag; otherwise its only XML) or what runs."""
    with libvirt_errors(kind.xml_context.format(obj.name())):
        text = None
        if inactive and kind.inactive_flag:
            try:
                text = obj.XMLDesc(getattr(libvirt, kind.inactive_flag))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in tuple(error_code(*c) for c in _NO_FLAG):
                    raise
        if text is None:
            text = obj.XMLDesc(0)
        return parse_xml(text, kind.root_tag, "libvirt's {} XML".format(kind.noun))


__all__ = ["DOMAIN", "NETWORK", "POOL", "VOLUME", "Kind", "lookup", "read_xml", "select"]
