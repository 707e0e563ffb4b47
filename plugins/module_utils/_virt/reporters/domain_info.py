# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only facts about domains (the domain_info module, and any module that reports guests)."""

from __future__ import annotations

import fnmatch

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.addresses import ADDRESS_SOURCES, read_addresses
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import VirtError, libvirt_errors
from ansible_collections.lockstep.virt.plugins.module_utils._virt.handoff_marker import describe_handoff, marker_in
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    domain_disks,
    domain_lease_resources,
    probe_resources,
    public_lease,
    read_lock_config,
    share_users,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managed import get_user_metadata, is_managed
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, read_xml, select, volume_path
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, to_bytes


def domain_summary(dom, state=None):
    """{name, uuid, id, state, persistent, autostart} of a libvirt domain."""
    with libvirt_errors("cannot read domain {}".format(dom.name())):
        dom_id = dom.ID()
        persistent = bool(dom.isPersistent())
        return {
            "name": dom.name(),
            "uuid": dom.UUIDString(),
            "id": dom_id if dom_id >= 0 else None,
            "state": state or state_name(dom),
            "persistent": persistent,
            "autostart": bool(dom.autostart()) if persistent else False,
        }


INFO_STATES = ["running", "paused", "shutoff", "crashed", "pmsuspended", "shutdown", "blocked", "nostate"]

DOMAIN_INFO_ARGUMENT_SPEC = {
    "name": {"type": "str"},
    "pattern": {"type": "str"},
    "state": {"type": "list", "elements": "str", "choices": INFO_STATES},
    "managed": {"type": "bool"},
    "addresses": {"type": "str", "choices": ["none"] + list(ADDRESS_SOURCES), "default": "none"},
    "inactive_xml": {"type": "bool", "default": False},
}
DOMAIN_INFO_MUTUALLY_EXCLUSIVE = [("name", "pattern")]


def _mib(root, tag):
    found = elements(root, tag)
    if not found or not (found[0].text or "").strip().isdigit():
        return None
    return to_bytes(found[0].text.strip(), found[0].get("unit", "KiB")) // (1024 * 1024)


def _int_text(root, tag):
    found = elements(root, tag)
    try:
        return int((found[0].text or "").strip()) if found else None
    except ValueError:
        return None


def interfaces_of(root):
    out = []
    devices = elements(root, "devices")
    for iface in elements(devices[0], "interface") if devices else []:
        mac = elements(iface, "mac")
        source = elements(iface, "source")
        model = elements(iface, "model")
        target = elements(iface, "target")
        out.append(
            {
                "type": iface.get("type"),
                "mac": mac[0].get("address") if mac else None,
                "network": source[0].get("network") if source else None,
                "bridge": source[0].get("bridge") if source else None,
                "model": model[0].get("type") if model else None,
                "device": target[0].get("dev") if target else None,
                "addresses": [],
            }
        )
    return out


def interface_addresses(dom, source):
    """{mac: [{address, prefix, type}]} from DHCP leases, the guest agent or ARP."""
    out = {}
    for a in read_addresses(dom, source):
        out.setdefault(a["mac"] or "", []).append({"address": a["address"], "prefix": a["prefix"], "type": a["family"]})
    return out


def domain_facts(conn, dom, lock_config, addresses="none", with_inactive_xml=False, warnings=None):
    """Everything domain_info reports about one domain."""
    facts = domain_summary(dom)
    active = facts["id"] is not None
    root = read_xml(dom, DOMAIN, inactive=not active)

    def resolve(pool, volume):
        return volume_path(conn, pool, volume)

    sharers = share_users(conn.virt, exclude=dom.name(), paused_holds=conn.profile.paused_guest_holds_leases)
    leases = probe_resources(domain_lease_resources(root, lock_config, resolve), lock_config, sharers=sharers)
    by_disk = dict((r["disk"], r) for r in leases if r["kind"] == "disk")
    disks = []
    for d in domain_disks(root, resolve):
        r = by_disk.get(d["target"], {})
        d = dict(d)
        d.update(
            lease_resource=r.get("resource"),
            held=r.get("held"),
            held_here=r.get("held_here"),
            holder_pid=r.get("holder_pid"),
            holder_host=r.get("holder_host"),
        )
        disks.append(d)
    ifaces = interfaces_of(root)
    if addresses != "none" and active:
        try:
            found = interface_addresses(dom, addresses)
        except VirtError as err:
            found = {}
            if warnings is not None:
                warnings.append("{}: no {} addresses: {}".format(dom.name(), addresses, err.msg))
        for iface in ifaces:
            iface["addresses"] = found.get((iface["mac"] or "").lower(), [])
    facts.update(
        state=("running" if facts["state"] == "blocked" else facts["state"]),
        type=root.get("type"),
        managed=is_managed(root),
        memory_mib=_mib(root, "memory"),
        current_memory_mib=_mib(root, "currentMemory"),
        vcpus=_int_text(root, "vcpu"),
        disks=disks,
        leases=[public_lease(r) for r in leases],
        interfaces=ifaces,
        metadata=get_user_metadata(root),
    )
    marker = marker_in(root)
    facts["handoff"] = dict(marker, note=describe_handoff(facts["state"], marker)) if marker else None
    if with_inactive_xml:
        with libvirt_errors("cannot read the XML of {}".format(dom.name())):
            facts["inactive_xml"] = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return facts


class DomainInfoReporter:
    """Select domains by name / glob pattern / state / managed mark and report their facts."""

    def __init__(self, conn, params, lock_config=None):
        self.conn = conn
        self.params = params
        self.lock_config = lock_config or read_lock_config(conn.profile, local=conn.local)

    def select(self):
        p = self.params
        if p.get("name"):
            doms = select(self.conn, DOMAIN, p["name"])
        else:
            doms = select(self.conn, DOMAIN, context="cannot list domains")
        if p.get("pattern"):
            doms = [d for d in doms if fnmatch.fnmatchcase(d.name(), p["pattern"])]
        return sorted(doms, key=lambda d: d.name())

    def run(self):
        p = self.params
        warnings = []
        out = []
        for dom in self.select():
            try:
                facts = domain_facts(
                    self.conn,
                    dom,
                    self.lock_config,
                    addresses=p.get("addresses") or "none",
                    with_inactive_xml=p.get("inactive_xml", False),
                    warnings=warnings,
                )
            except VirtError as err:
                if err.code == getattr(libvirt, "VIR_ERR_NO_DOMAIN", 42):
                    continue  # went away while listing
                raise
            if p.get("state") and facts["state"] not in p["state"]:
                continue
            if p.get("managed") is not None and facts["managed"] != p["managed"]:
                continue
            out.append(facts)
        result = {"changed": False, "domains": out, "count": len(out), "lock_config": self.lock_config.to_dict()}
        if warnings:
            result["warnings"] = warnings
        return result


__all__ = ["DomainInfoReporter", "DOMAIN_INFO_ARGUMENT_SPEC", "domain_facts", "interfaces_of"]
