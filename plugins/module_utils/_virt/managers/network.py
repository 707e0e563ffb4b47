# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The network manager: the converge sequence of managers.base.DefinedManager, filled in for networks.

Drift uses the XML engine's intent-based projection. On top of it, a network's repeated parts
(``<ip>`` by address, ``<forward>``, ``<dns>``, ``<domain>``, ``<mtu>``, routes, port groups) are
compared as whole sets, so dropping one from the definition is a difference too; static DHCP hosts
and DNS hosts are compared as sets on their own, because they are changed live with
``virNetworkUpdate`` (LIVE and CONFIG) without restarting the network (dnsmasq only re-reads its
host files). Any other change redefines the network; a running network is restarted only with
``restart_on_change``, otherwise the result says ``pending_restart``.

It never calls exit_json/fail_json: :meth:`NetworkManager.run` returns the result dict or raises
VirtError (with partial results in ``err.result``).
"""

from __future__ import annotations

import copy
import ipaddress

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import libvirt_errors
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managed import is_managed, mark_managed
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.base import (
    DEFINITION_MUTUALLY_EXCLUSIVE,
    DefinedManager,
    FromSpec,
    definition_argument_spec,
    user_xml,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import NETWORK, read_xml, select
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.network import (
    NETWORK_SPEC_OPTIONS,
    build_network_xml,
    normalize_network_spec,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import (
    canonical,
    canonical_text,
    differences,
    elements,
    etree,
    local,
    normalize,
    project,
    to_text,
)

NETWORK_STATES = ["present", "absent", "active", "inactive"]

NETWORK_ARGUMENT_SPEC = definition_argument_spec(NETWORK_STATES, NETWORK_SPEC_OPTIONS)
NETWORK_MUTUALLY_EXCLUSIVE = DEFINITION_MUTUALLY_EXCLUSIVE

# Children of <network> compared as whole sets (libvirt never adds them on its own).
EXACT_TAGS = ("forward", "domain", "mtu", "dns", "ip", "route", "portgroup")


# --------------------------------------------------------------------------- reading
def desired_network_from_xml(name, text):
    """Parse user XML for network ``name``: safe parse, <name> check, managed mark."""
    root = user_xml(name, text, "network")
    mark_managed(root, "network")
    return root


# --------------------------------------------------------------------------- drift
def _ip_key(el):
    addr = el.get("address") or ""
    try:
        addr = str(ipaddress.ip_address(addr))
    except ValueError:
        pass
    family = el.get("family") or ("ipv6" if ":" in addr else "ipv4")
    return (family, addr)


def _canon(el):
    return etree.tostring(canonical(el), encoding="unicode")


class _Parts:
    """A network split into what the projection compares, the set-compared groups and the hosts."""

    def __init__(self, root):
        self.rest = copy.deepcopy(root)
        self.groups = {}
        self.ip_order = []
        self.dhcp_hosts = {}
        self.dns_hosts = []
        for child in elements(self.rest):
            tag = local(child.tag)
            if tag not in EXACT_TAGS:
                continue
            self.rest.remove(child)
            if tag == "ip":
                key = _ip_key(child)
                self.ip_order.append(key)
                hosts = self.dhcp_hosts.setdefault(key, [])
                for dhcp in elements(child, "dhcp"):
                    for host in elements(dhcp, "host"):
                        dhcp.remove(host)
                        hosts.append(host)
                    if not elements(dhcp) and not dhcp.attrib:
                        child.remove(dhcp)
            elif tag == "dns":
                for host in elements(child, "host"):
                    child.remove(host)
                    self.dns_hosts.append(host)
                if not elements(child) and not child.attrib:
                    continue
            self.groups.setdefault(tag, []).append(child)


def _pair(tag, desired, actual):
    remaining = list(actual)
    pairs = []
    for d in desired:
        found = None
        if tag == "ip":
            for a in remaining:
                if _ip_key(a) == _ip_key(d):
                    found = a
                    break
        elif remaining:
            found = remaining[0]
        if found is not None:
            remaining.remove(found)
        pairs.append((d, found))
    return pairs, remaining


def _host_set(hosts):
    out = {}
    for h in hosts:
        out[_canon(h)] = h
    return out


def _append_hosts(root, where, hosts):
    """Append ``hosts`` (sorted) to <ip key>/<dhcp> (where=('ip', key)) or <dns> (where=('dns',))."""
    if not hosts:
        return
    if where[0] == "ip":
        ips = [ip for ip in elements(root, "ip") if _ip_key(ip) == where[1]]
        if not ips:
            return
        dhcp = elements(ips[0], "dhcp")
        parent = dhcp[0] if dhcp else etree.SubElement(ips[0], "dhcp")
    else:
        dns = elements(root, "dns")
        parent = dns[0] if dns else etree.SubElement(root, "dns")
    for key in sorted(_host_set(hosts)):
        parent.append(copy.deepcopy(_host_set(hosts)[key]))


class NetworkDrift:
    """``changed``; ``rest_changed`` (needs a redefinition); ``host_ops`` (live updates);
    ``before``/``after`` texts; ``differences`` (paths)."""

    def __init__(self, rest_changed, host_ops, before, after, diffs):
        self.rest_changed = rest_changed
        self.host_ops = host_ops
        self.changed = rest_changed or bool(host_ops)
        self.before = before
        self.after = after
        self.differences = diffs


def network_drift(desired, actual):
    """Intent-based drift of a network definition, with set semantics for its repeated parts."""
    if actual is None:
        return NetworkDrift(True, [], "", canonical_text(desired), ["/network"])
    dp = _Parts(normalize(desired))
    ap = _Parts(normalize(actual))
    before = project(dp.rest, ap.rest)
    after = copy.deepcopy(dp.rest)
    diffs = differences(dp.rest, before)
    for tag in EXACT_TAGS:
        pairs, extra = _pair(tag, dp.groups.get(tag, []), ap.groups.get(tag, []))
        for i, (d, a) in enumerate(pairs):
            after.append(copy.deepcopy(d))
            if a is None:
                diffs.append("/network/{}[{}] (missing)".format(tag, i + 1))
                continue
            p = project(d, a)
            diffs.extend(differences(d, p, "/network"))
            before.append(p)
        for a in extra:
            diffs.append("/network/{} (not in the definition)".format(tag))
            before.append(copy.deepcopy(a))
    host_ops = []
    deletes, adds = [], []
    for key in list(dict.fromkeys(ap.ip_order + dp.ip_order)):
        want = _host_set(dp.dhcp_hosts.get(key, []))
        have = _host_set(ap.dhcp_hosts.get(key, []))
        index = ap.ip_order.index(key) if key in ap.ip_order else -1
        for k in sorted(set(have) - set(want)):
            deletes.append(("dhcp_host", index, have[k]))
            diffs.append("/network/ip[@address='{}']/dhcp/host (not in the definition): {}".format(key[1], k))
        for k in sorted(set(want) - set(have)):
            adds.append(("dhcp_host", index, want[k]))
            diffs.append("/network/ip[@address='{}']/dhcp/host (missing): {}".format(key[1], k))
        _append_hosts(before, ("ip", key), ap.dhcp_hosts.get(key, []))
        _append_hosts(after, ("ip", key), dp.dhcp_hosts.get(key, []))
    want = _host_set(dp.dns_hosts)
    have = _host_set(ap.dns_hosts)
    for k in sorted(set(have) - set(want)):
        deletes.append(("dns_host", -1, have[k]))
        diffs.append("/network/dns/host (not in the definition): {}".format(k))
    for k in sorted(set(want) - set(have)):
        adds.append(("dns_host", -1, want[k]))
        diffs.append("/network/dns/host (missing): {}".format(k))
    _append_hosts(before, ("dns",), ap.dns_hosts)
    _append_hosts(after, ("dns",), dp.dns_hosts)
    host_ops = [("delete",) + op for op in deletes] + [("add",) + op for op in adds]
    rest_changed = len(diffs) > len(host_ops)
    # A host op whose <ip> does not exist on the other side goes with the redefinition.
    if any(op[2] < 0 and op[1] == "dhcp_host" for op in host_ops):
        rest_changed = True
    return NetworkDrift(rest_changed, host_ops, to_text(canonical(before)), to_text(canonical(after)), diffs)


# --------------------------------------------------------------------------- facts
def _prefix(ip):
    if ip.get("prefix"):
        return int(ip.get("prefix"))
    if ip.get("netmask"):
        try:
            return ipaddress.ip_network("0.0.0.0/{}".format(ip.get("netmask"))).prefixlen
        except ValueError:
            return None
    return None


def network_summary(net):
    with libvirt_errors("cannot read network {}".format(net.name())):
        persistent = bool(net.isPersistent())
        out = {
            "name": net.name(),
            "uuid": net.UUIDString(),
            "active": bool(net.isActive()),
            "persistent": persistent,
            "autostart": bool(net.autostart()) if persistent else False,
        }
    try:
        out["bridge"] = net.bridgeName()
    except libvirt.libvirtError:
        out["bridge"] = None
    return out


def network_facts(net):
    """Everything network_info reports about ``net``."""
    out = network_summary(net)
    root = read_xml(net, NETWORK, inactive=True)
    fwd = elements(root, "forward")
    out["forward_mode"] = (fwd[0].get("mode") or "nat") if fwd else "isolated"
    mtu = elements(root, "mtu")
    out["mtu"] = int(mtu[0].get("size")) if mtu and (mtu[0].get("size") or "").isdigit() else None
    dom = elements(root, "domain")
    out["domain"] = dom[0].get("name") if dom else None
    out["managed"] = is_managed(root)
    addresses = []
    for ip in elements(root, "ip"):
        family, address = _ip_key(ip)
        entry = {"family": family, "address": address, "prefix": _prefix(ip), "dhcp_range": None, "dhcp_hosts": []}
        for dhcp in elements(ip, "dhcp"):
            for rng in elements(dhcp, "range"):
                entry["dhcp_range"] = {"start": rng.get("start"), "end": rng.get("end")}
            for host in elements(dhcp, "host"):
                entry["dhcp_hosts"].append({"mac": host.get("mac"), "name": host.get("name"), "ip": host.get("ip")})
        addresses.append(entry)
    out["addresses"] = addresses
    out["dns_hosts"] = [
        {"ip": h.get("ip"), "hostnames": [(n.text or "").strip() for n in elements(h, "hostname")]}
        for dns in elements(root, "dns")
        for h in elements(dns, "host")
    ]
    leases = []
    if out["active"]:
        try:
            raw = net.DHCPLeases()
        except libvirt.libvirtError:
            raw = []
        for lease in raw or []:
            leases.append(
                {
                    "mac": lease.get("mac"),
                    "ip": lease.get("ipaddr"),
                    "prefix": lease.get("prefix"),
                    "hostname": lease.get("hostname"),
                    "client_id": lease.get("clientid"),
                    "expiry": lease.get("expirytime"),
                }
            )
    out["dhcp_leases"] = leases
    out["xml"] = to_text(root)
    return out


def list_networks(conn, name=None):
    return [network_facts(net) for net in select(conn, NETWORK, name)]


# --------------------------------------------------------------------------- manager
_SECTIONS = {"dhcp_host": "VIR_NETWORK_SECTION_IP_DHCP_HOST", "dns_host": "VIR_NETWORK_SECTION_DNS_HOST"}
_COMMANDS = {"add": "VIR_NETWORK_UPDATE_COMMAND_ADD_LAST", "delete": "VIR_NETWORK_UPDATE_COMMAND_DELETE"}


class NetworkManager(DefinedManager):
    """Bring one network to the state described by the module parameters: the converge sequence of
    :class:`DefinedManager`, with static DHCP and DNS hosts changed live as its live-change step."""

    KIND = NETWORK
    RESULT = {"pending_restart": False}
    SUMMARY_KEY = "network"
    FROM_XML = staticmethod(desired_network_from_xml)
    FROM_SPEC = FromSpec(build_network_xml, normalize_network_spec)
    GENERATED = ("uuid", "mac")
    VALIDATE_FLAG = "VIR_NETWORK_DEFINE_VALIDATE"

    def _drift(self, desired, existing):
        return network_drift(desired, existing)

    def _needs_redefine(self, drift):
        return drift.rest_changed

    def _define_xml(self, text, flags=0):
        if not flags:
            return self.conn.virt.networkDefineXML(text)
        return self.conn.virt.networkDefineXMLFlags(text, flags)

    def _live_change(self, obj, drift, redefined, before):
        if not redefined:
            if drift.host_ops:
                self._update_hosts(obj, drift.host_ops, live_only=False)
        elif before["active"]:
            # what runs gets its static hosts now; the rest waits for a restart
            live_ops = network_drift(self._built, read_xml(obj, NETWORK, inactive=False)).host_ops
            if live_ops:
                self._update_hosts(obj, live_ops, live_only=True)

    def _live_differences(self, obj, desired):
        drift = network_drift(desired, read_xml(obj, NETWORK, inactive=False))
        return drift.differences if drift.rest_changed else []

    def _summary(self, obj, predicted, desired):
        if obj is None:  # check mode, new network
            return {
                "name": self.name,
                "uuid": None,
                "active": predicted["state"] == "active",
                "persistent": True,
                "autostart": predicted["autostart"],
                "bridge": None,
            }
        out = network_summary(obj)
        if self.check_mode:
            out.update(active=predicted["state"] == "active", autostart=predicted["autostart"])
        return out

    def _update_hosts(self, net, ops, live_only):
        self._act("update_hosts")
        self.result["host_updates"] = [
            {"command": c, "section": s, "xml": etree.tostring(canonical(e), encoding="unicode")} for c, s, _i, e in ops
        ]
        if self.check_mode:
            return
        if live_only:
            flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        else:
            flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
            if net.isActive():
                flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        for command, section, index, el in ops:
            text = etree.tostring(el, encoding="unicode")
            with libvirt_errors(
                "cannot update network {} ({} {})".format(self.name, command, section.replace("_", " "))
            ):
                net.update(
                    getattr(libvirt, _COMMANDS[command]),
                    getattr(libvirt, _SECTIONS[section]),
                    index,
                    text,
                    flags,
                )
