# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A guest's IP addresses as libvirt reads them (``virDomainInterfaceAddresses``), and the wait for one.

Sources: ``agent`` (the QEMU guest agent inside the guest: every interface, loopback included), ``lease``
(the DHCP leases of the libvirt networks the guest's interfaces are on) and ``arp`` (the host's ARP table).
libvirt's Python binding returns ``{interface: {"hwaddr": mac, "addrs": [{"addr", "prefix", "type"}]}}``,
``{}`` when the source knows no address (a guest without interfaces, no lease yet), and raises
``libvirtError`` when the source cannot answer (VIR_ERR_AGENT_UNRESPONSIVE: the agent is not connected yet;
VIR_ERR_ARGUMENT_UNSUPPORTED: the guest has no agent channel; VIR_ERR_OPERATION_INVALID: it does not run).
"""

from __future__ import annotations

import ipaddress
import time

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import VirtError, libvirt_errors

ADDRESS_SOURCES = ("lease", "agent", "arp")
# the sources the wait tries, in order: the agent knows every interface, the lease only DHCP's
WAIT_SOURCES = ("agent", "lease")


def address_source(name):
    """libvirt's VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_* value of a source name."""
    return {
        "lease": getattr(libvirt, "VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE", 0),
        "agent": getattr(libvirt, "VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT", 1),
        "arp": getattr(libvirt, "VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP", 2),
    }[name]


def read_addresses(dom, source):
    """[{interface, mac, address, prefix, family, source}] of ``dom`` from ``source``, in libvirt's order of
    interfaces; VirtError (with libvirt's code) when the source cannot answer."""
    with libvirt_errors("cannot read the {} addresses of {}".format(source, dom.name())):
        raw = dom.interfaceAddresses(address_source(source), 0) or {}
    ipv4 = getattr(libvirt, "VIR_IP_ADDR_TYPE_IPV4", 0)
    out = []
    for name, val in raw.items():
        mac = (val.get("hwaddr") or "").lower() or None
        for a in val.get("addrs") or []:
            out.append(
                {
                    "interface": name,
                    "mac": mac,
                    "address": a.get("addr"),
                    "prefix": a.get("prefix"),
                    "family": "ipv4" if a.get("type") == ipv4 else "ipv6",
                    "source": source,
                }
            )
    return out


def usable(entry):
    """Whether an address reaches the guest from outside: not loopback, link-local, unspecified or multicast."""
    try:
        ip = ipaddress.ip_address(entry["address"])
    except (TypeError, ValueError):
        return False
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast)


def guest_addresses(dom, sources=WAIT_SOURCES):
    """(the usable addresses of the first source in ``sources`` that has any, what each source tried
    answered: {source: "n address(es), none usable" or libvirt's error})."""
    seen = {}
    for source in sources:
        try:
            found = read_addresses(dom, source)
        except VirtError as err:
            seen[source] = err.msg
            continue
        good = [a for a in found if usable(a)]
        if good:
            seen[source] = "{} address(es)".format(len(good))
            return good, seen
        if found:
            seen[source] = "only loopback or link-local addresses: {}".format(
                ", ".join(sorted(set(a["address"] for a in found)))
            )
        else:
            seen[source] = "no address"
    return [], seen


def wait_for_addresses(dom, timeout, sources=WAIT_SOURCES, sleep=time.sleep, clock=time.monotonic, poll=1.0):
    """Poll ``dom`` until a source in ``sources`` gives a usable address (:func:`guest_addresses`); return
    them. VirtError after ``timeout`` seconds, or when the guest stops, saying what each source answered."""
    deadline = clock() + max(0, timeout)
    tries = 0
    while True:
        tries += 1
        found, seen = guest_addresses(dom, sources)
        if found:
            return found
        with libvirt_errors("cannot read the state of {}".format(dom.name())):
            active = bool(dom.isActive())
        what = "; ".join("{}: {}".format(s, seen[s]) for s in sources if s in seen)
        seen_result = {"addresses": [], "address_sources": seen}
        if not active:
            raise VirtError(
                "{} stopped while waiting for its address ({})".format(dom.name(), what), result=seen_result
            )
        now = clock()
        if now >= deadline:
            raise VirtError(
                "{} has no address after {} s ({} tries of the sources {}; last answers - {})".format(
                    dom.name(), timeout, tries, ", ".join(sources), what
                ),
                result=seen_result,
            )
        sleep(min(poll, max(0.05, deadline - now)))


__all__ = ["ADDRESS_SOURCES", "WAIT_SOURCES", "guest_addresses", "read_addresses", "usable", "wait_for_addresses"]
