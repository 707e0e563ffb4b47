# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a domain definition references that the host lacks: storage pools and volumes of
``type='volume'`` disks, and networks of ``type='network'`` interfaces.

libvirt defines such a domain without a word and fails only at its next start; the domain manager
calls :func:`check_domain_references` before it defines anything, so a definition naming a missing
pool, volume or network fails with nothing changed, in normal and check mode alike.
"""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt.connection import libvirt_errors
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import DependencyError, ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import domain_disks
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import NETWORK, POOL, VOLUME, Host
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements


def domain_references(root):
    """What the domain XML ``root`` names on its host: ``{"pools": {pool: [volume, ...]}, "networks": [...]}``
    (each in document order, without repeats)."""
    pools, networks = {}, []
    for disk in domain_disks(root):
        if disk["pool"]:
            vols = pools.setdefault(disk["pool"], [])
            if disk["volume"] and disk["volume"] not in vols:
                vols.append(disk["volume"])
    devices = elements(root, "devices")
    if not devices:
        return {"pools": pools, "networks": networks}
    for iface in elements(devices[0], "interface"):
        if iface.get("type") != "network":
            continue
        for src in elements(iface, "source"):
            net = src.get("network")
            if net and net not in networks:
                networks.append(net)
    return {"pools": pools, "networks": networks}


def missing_references(conn, root, provided=(), host=None):
    """Messages naming each pool, volume and network that the domain XML ``root`` references and the
    host of ``conn`` lacks (empty when it has them all). A volume is looked for as libvirt looks for it
    when the guest starts: among what its pool lists (no refresh). A volume of an inactive pool is not
    checked: libvirt lists an inactive pool's volumes only once it runs. ``provided``: (pool, volume)
    pairs the caller creates itself before it defines the domain (the cloud-init seed). ``host``: where the
    lookups go (an objects.Host; by default straight to libvirt)."""
    host = host or Host(conn)
    refs = domain_references(root)
    missing = []
    for pool_name, volumes in refs["pools"].items():
        pool = host.lookup(POOL, pool_name)
        if pool is None:
            missing.append("storage pool {}".format(pool_name))
            continue
        with libvirt_errors("cannot read storage pool {}".format(pool_name)):
            active = bool(pool.isActive())
        if not active:
            continue
        for vol in volumes:
            if (pool_name, vol) not in provided and host.volume(pool_name, vol) is None:
                missing.append("volume {} in storage pool {}".format(vol, pool_name))
    for net in refs["networks"]:
        if host.lookup(NETWORK, net) is None:
            missing.append("network {}".format(net))
    return missing


def failed_references(host, root):
    """Why what the domain XML ``root`` references was not brought to its state by this run (messages;
    empty when nothing it needs failed)."""
    refs = domain_references(root)
    wanted = [(POOL, p, None) for p in refs["pools"]]
    wanted += [(VOLUME, v, p) for p, vols in refs["pools"].items() for v in vols]
    wanted += [(NETWORK, n, None) for n in refs["networks"]]
    out = []
    for kind, name, pool in wanted:
        reason = host.failure(kind, name, pool)
        if reason:
            out.append("{} {} ({})".format(kind.noun, name if pool is None else pool + "/" + name, reason))
    return out


def check_domain_references(conn, name, root, provided=(), host=None):
    """Raise ValidationError when the definition ``root`` of domain ``name`` references a pool, volume
    or network that the host lacks (less the ``provided`` (pool, volume) pairs), or DependencyError when
    one of them failed earlier in this run (``host``)."""
    host = host or Host(conn)
    failed = failed_references(host, root)
    if failed:
        raise DependencyError("domain {} was skipped: what it needs failed: {}".format(name, "; ".join(failed)))
    missing = missing_references(conn, root, provided, host)
    if missing:
        raise ValidationError(
            "domain {} references what {} does not have: {}; nothing was changed".format(
                name, conn.hostname, ", ".join(missing)
            )
        )


__all__ = ["check_domain_references", "domain_references", "failed_references", "missing_references"]
