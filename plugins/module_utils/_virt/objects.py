# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt object kinds (domain, network, storage pool, volume, secret): how each is looked up by name
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
    VirtError,
    error_code,
    from_libvirt_error,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.nolog import register_read_secrets, xml_secrets
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
SECRET = _kind(
    "secret", "secretLookupByUUIDString", "listAllSecrets", ("NO_SECRET", 66), None, xml_context="cannot read secret {}"
)

# What a driver answers for an XMLDesc flag it does not have (test:// has one definition).
_NO_FLAG = (("INVALID_ARG", 8), ("NO_SUPPORT", 3))


def _name(obj):
    """An object's name (a secret, which has none, by its UUID)."""
    return obj.name() if hasattr(obj, "name") else obj.UUIDString()


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
        return sorted(lister(0), key=_name)


# The XMLDesc flag that makes libvirt include the secrets of a definition (a console's passwd, an HTTP
# disk's cookies); it needs a read-write connection. Kinds without one have no such secrets.
SECURE_FLAGS = {"domain": "VIR_DOMAIN_XML_SECURE"}


def read_xml(obj, kind, inactive=True, secure=False):
    """The XML element of ``obj``: its persistent definition (``inactive``, where the driver has the
    flag; otherwise its only XML) or what runs. ``secure``: with the secrets libvirt only returns on
    request (a domain's console passwords and disk cookies); they are registered with
    nolog.register_read_secrets so that no result, diff or log shows them."""
    secure_flag = getattr(libvirt, SECURE_FLAGS.get(kind.noun, ""), 0) if secure else 0
    with libvirt_errors(kind.xml_context.format(_name(obj))):
        text = None
        if inactive and kind.inactive_flag:
            try:
                text = obj.XMLDesc(getattr(libvirt, kind.inactive_flag) | secure_flag)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in tuple(error_code(*c) for c in _NO_FLAG):
                    raise
        if text is None:
            text = obj.XMLDesc(secure_flag)
        if secure_flag:
            register_read_secrets(xml_secrets(text))
        return parse_xml(text, kind.root_tag, "libvirt's {} XML".format(kind.noun))


def lookup_volume(conn, pool, name):
    """The volume ``name`` of storage pool ``pool`` (a name), or None when the pool or the volume is missing."""
    pool_obj = lookup(conn, POOL, pool)
    return lookup(pool_obj, VOLUME, name) if pool_obj is not None else None


def volume_path(conn, pool, name):
    """The path of volume ``name`` in pool ``pool``, or None when it cannot be found (how a ``type='volume'``
    disk is resolved to the file its lease covers)."""
    try:
        vol = lookup_volume(conn, pool, name)
        return vol.path() if vol is not None else None
    except (VirtError, libvirt.libvirtError):
        return None


class Host:
    """Lookups and XML reads of one host, straight from libvirt: what a manager asks for its objects.

    :class:`HostCache` answers the same questions from one bulk read per kind.
    """

    def __init__(self, conn):
        self.conn = conn

    def lookup(self, kind, name):
        return lookup(self.conn, kind, name)

    def volume(self, pool, name):
        return lookup_volume(self.conn, pool, name)

    def volume_path(self, pool, name):
        return volume_path(self.conn, pool, name)

    def read_xml(self, obj, kind, secure=False):
        """The persistent definition of ``obj`` (``secure``: with its secrets)."""
        return read_xml(obj, kind, secure=secure)

    def put(self, kind, name, obj, pool=None):
        """``obj`` was (re)defined or created: later lookups and reads see it."""

    def drop(self, kind, name, pool=None):
        """The object was removed."""

    def planned(self, kind, name, pool=None):
        """Check mode: the object would have been created (later references to it are satisfied)."""

    def failure(self, kind, name, pool=None):
        """The reason an object this run depends on was not brought to its state, or None."""
        return None


class Planned:
    """Stands for an object that check mode would have created: it exists and is active."""

    def __init__(self, name):
        self._name = name

    def name(self):
        return self._name

    def isActive(self):
        return 1


class HostCache(Host):
    """One bulk read of a host: every domain, network and storage pool (``listAll*``) and the volumes of
    every active pool, each object's persistent XML read at most once, lookups answered from memory.

    What a run changes is told back (:meth:`put`, :meth:`drop`, :meth:`planned`); what failed is recorded
    with :meth:`fail` so that what depends on it is skipped rather than tried.
    """

    def __init__(self, conn, kinds=(DOMAIN, NETWORK, POOL)):
        super().__init__(conn)
        self._objects = {}
        self._xml = {}
        self._failed = {}
        for kind in kinds:
            self._objects[kind.noun] = dict((_name(o), o) for o in select(conn, kind))
        self._volumes = {}

    def names(self, kind, pool=None):
        """Every name of ``kind`` the host has (the volumes of ``pool``), sorted."""
        if kind is VOLUME:
            return sorted(n for n, o in self._pool_volumes(pool).items() if not isinstance(o, Planned))
        return sorted(n for n, o in self._objects[kind.noun].items() if not isinstance(o, Planned))

    def lookup(self, kind, name):
        if kind.noun not in self._objects:
            return super().lookup(kind, name)
        return self._objects[kind.noun].get(name)

    def _pool_volumes(self, pool):
        if pool not in self._volumes:
            pool_obj = self.lookup(POOL, pool)
            vols = {}
            if pool_obj is not None and not isinstance(pool_obj, Planned):
                with libvirt_errors("cannot read storage pool {}".format(pool)):
                    active = pool_obj.isActive()
                if active:
                    vols = dict(
                        (_name(v), v) for v in select(pool_obj, VOLUME, None, "cannot list the volumes of " + pool)
                    )
            self._volumes[pool] = vols
        return self._volumes[pool]

    def volume(self, pool, name):
        return self._pool_volumes(pool).get(name)

    def volume_path(self, pool, name):
        vol = self.volume(pool, name)
        if vol is None or isinstance(vol, Planned):
            return None
        try:
            return vol.path()
        except libvirt.libvirtError:
            return None

    def read_xml(self, obj, kind, secure=False):
        if kind is VOLUME or secure:  # read once anyway: each volume is one item, a secure read one object's
            return read_xml(obj, kind, secure=secure)
        key = (kind.noun, _name(obj))
        if key not in self._xml:
            self._xml[key] = read_xml(obj, kind)
        return self._xml[key]

    def _table(self, kind, pool):
        return self._pool_volumes(pool) if kind is VOLUME else self._objects.setdefault(kind.noun, {})

    def put(self, kind, name, obj, pool=None):
        self._table(kind, pool)[name] = obj
        self._xml.pop((kind.noun, name), None)
        if kind is POOL:
            self._volumes.pop(name, None)  # a pool started by this run lists its volumes now

    def drop(self, kind, name, pool=None):
        self._table(kind, pool).pop(name, None)
        self._xml.pop((kind.noun, name), None)

    def planned(self, kind, name, pool=None):
        table = self._table(kind, pool)
        if name not in table:
            table[name] = Planned(name)
        if kind is POOL:
            self._volumes.setdefault(name, {})

    def fail(self, kind, name, reason, pool=None):
        self._failed[(kind.noun, pool, name)] = reason

    def failure(self, kind, name, pool=None):
        return self._failed.get((kind.noun, pool, name))


__all__ = [
    "DOMAIN",
    "NETWORK",
    "POOL",
    "SECRET",
    "VOLUME",
    "Host",
    "Kind",
    "Planned",
    "HostCache",
    "lookup",
    "lookup_volume",
    "read_xml",
    "select",
    "volume_path",
]
