# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Structured ``spec`` -> libvirt network XML, and the argument spec of that ``spec``.

:func:`normalize_network_spec` validates a spec (unknown keys, addresses, prefixes, ranges, MACs) and
:func:`build_network_xml` turns it into an lxml element carrying the managed mark.
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managed import mark_managed
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.common import sub, validate_spec
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import etree

FORWARD_MODES = ["nat", "route", "bridge", "open", "isolated"]

DHCP_RANGE_OPTIONS = {
    "start": {"type": "str", "required": True},
    "end": {"type": "str", "required": True},
}

DHCP_HOST_OPTIONS = {
    "mac": {"type": "str"},
    "name": {"type": "str"},
    "ip": {"type": "str", "required": True},
}

IP_OPTIONS = {
    "address": {"type": "str", "required": True},
    "prefix": {"type": "int", "required": True},
    "dhcp_range": {"type": "dict", "options": DHCP_RANGE_OPTIONS},
    "dhcp_hosts": {"type": "list", "elements": "dict", "options": DHCP_HOST_OPTIONS, "default": []},
}

DNS_HOST_OPTIONS = {
    "ip": {"type": "str", "required": True},
    "hostnames": {"type": "list", "elements": "str", "required": True},
}

NETWORK_SPEC_OPTIONS = {
    "forward": {"type": "str", "choices": FORWARD_MODES, "default": "nat"},
    "bridge": {"type": "str"},
    "mtu": {"type": "int"},
    "domain": {"type": "str"},
    "ipv4": {"type": "dict", "options": IP_OPTIONS},
    "ipv6": {"type": "dict", "options": IP_OPTIONS},
    "dns_hosts": {"type": "list", "elements": "dict", "options": DNS_HOST_OPTIONS, "default": []},
}

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")


def _address(value, version, what):
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ValidationError("{} is not an IP address: {!r}".format(what, value)) from None
    if addr.version != version:
        raise ValidationError("{} must be an IPv{} address, got {!r}".format(what, version, value))
    return addr


def _check_ip(ip, version, where):
    addr = _address(ip["address"], version, where + ".address")
    top = 32 if version == 4 else 128
    if not 1 <= ip["prefix"] <= top:
        raise ValidationError("{}.prefix must be between 1 and {}, got {}".format(where, top, ip["prefix"]))
    net = ipaddress.ip_network("{}/{}".format(addr, ip["prefix"]), strict=False)
    ip["address"] = str(addr)
    rng = ip.get("dhcp_range")
    if rng:
        start = _address(rng["start"], version, where + ".dhcp_range.start")
        end = _address(rng["end"], version, where + ".dhcp_range.end")
        if start not in net or end not in net:
            raise ValidationError("{}.dhcp_range must lie inside {}".format(where, net))
        if int(start) > int(end):
            raise ValidationError("{}.dhcp_range.start is after its end".format(where))
        rng["start"], rng["end"] = str(start), str(end)
    seen = set()
    for i, host in enumerate(ip["dhcp_hosts"]):
        hw = "{}.dhcp_hosts[{}]".format(where, i)
        hip = _address(host["ip"], version, hw + ".ip")
        if hip not in net:
            raise ValidationError("{}.ip {} is outside {}".format(hw, hip, net))
        host["ip"] = str(hip)
        if version == 4:
            if not host.get("mac"):
                raise ValidationError("{}.mac is required for an IPv4 host".format(hw))
            if not _MAC_RE.match(host["mac"]):
                raise ValidationError("{}.mac is not a MAC address: {!r}".format(hw, host["mac"]))
            host["mac"] = host["mac"].lower()
        elif host.get("mac"):
            raise ValidationError("{}: IPv6 static hosts are matched by name, not mac".format(hw))
        elif not host.get("name"):
            raise ValidationError("{}.name is required for an IPv6 host".format(hw))
        if host.get("name") and not _HOSTNAME_RE.match(host["name"]):
            raise ValidationError("{}.name is not a host name: {!r}".format(hw, host["name"]))
        key = host.get("mac") or host.get("name")
        if key in seen or host["ip"] in seen:
            raise ValidationError("{} repeats {}".format(hw, key if key in seen else host["ip"]))
        seen.update((key, host["ip"]))


def normalize_network_spec(spec, validated=False):
    """Validate ``spec`` against NETWORK_SPEC_OPTIONS, fill defaults and check values; returns a new dict."""
    s = validate_spec(
        NETWORK_SPEC_OPTIONS, spec, validated=validated
    )  # validated: the module's option, checked already
    mode = s["forward"]
    if s.get("bridge") is not None and not _BRIDGE_RE.match(s["bridge"]):
        raise ValidationError(
            "spec.bridge must be 1-15 characters of letters, digits, '.', '_', '-', got {!r}".format(s["bridge"])
        )
    if mode == "bridge":
        if not s.get("bridge"):
            raise ValidationError("spec.bridge (an existing host bridge) is required with forward: bridge")
        if s.get("ipv4") or s.get("ipv6") or s.get("dns_hosts") or s.get("domain"):
            raise ValidationError(
                "forward: bridge networks have no ipv4, ipv6, dns_hosts or domain (the host bridge's LAN serves them)"
            )
    if s.get("mtu") is not None and not 68 <= s["mtu"] <= 65535:
        raise ValidationError("spec.mtu must be between 68 and 65535, got {}".format(s["mtu"]))
    if s.get("domain") is not None and not _HOSTNAME_RE.match(s["domain"]):
        raise ValidationError("spec.domain is not a domain name: {!r}".format(s["domain"]))
    if s.get("ipv4"):
        _check_ip(s["ipv4"], 4, "spec.ipv4")
    if s.get("ipv6"):
        _check_ip(s["ipv6"], 6, "spec.ipv6")
    seen = set()
    for i, host in enumerate(s["dns_hosts"]):
        where = "spec.dns_hosts[{}]".format(i)
        try:
            host["ip"] = str(ipaddress.ip_address(host["ip"]))
        except ValueError:
            raise ValidationError("{}.ip is not an IP address: {!r}".format(where, host["ip"])) from None
        if host["ip"] in seen:
            raise ValidationError(
                "{}.ip {} is listed twice (give it several hostnames instead)".format(where, host["ip"])
            )
        seen.add(host["ip"])
        if not host["hostnames"]:
            raise ValidationError("{}.hostnames must not be empty".format(where))
        for name in host["hostnames"]:
            if not _HOSTNAME_RE.match(name):
                raise ValidationError("{}.hostnames: {!r} is not a host name".format(where, name))
    return s


def _ip(root, ip, family):
    el = sub(root, "ip", family="ipv6" if family == 6 else None, address=ip["address"], prefix=ip["prefix"])
    if ip.get("dhcp_range") or ip["dhcp_hosts"]:
        dhcp = sub(el, "dhcp")
        if ip.get("dhcp_range"):
            sub(dhcp, "range", start=ip["dhcp_range"]["start"], end=ip["dhcp_range"]["end"])
        for host in ip["dhcp_hosts"]:
            sub(dhcp, "host", mac=host.get("mac"), name=host.get("name"), ip=host["ip"])
    return el


def build_network_xml(name, spec, normalized=False):
    """Network XML (an lxml element) for ``spec``, with the managed mark."""
    s = spec if normalized else normalize_network_spec(spec)
    root = etree.Element("network")
    sub(root, "name", name)
    mark_managed(root, "network")
    if s["forward"] != "isolated":
        sub(root, "forward", mode=s["forward"])
    if s.get("bridge"):
        sub(root, "bridge", name=s["bridge"])
    if s.get("mtu") is not None:
        sub(root, "mtu", size=s["mtu"])
    if s.get("domain"):
        sub(root, "domain", name=s["domain"])
    if s["dns_hosts"]:
        dns = sub(root, "dns")
        for host in s["dns_hosts"]:
            el = sub(dns, "host", ip=host["ip"])
            for hostname in host["hostnames"]:
                sub(el, "hostname", hostname)
    if s.get("ipv4"):
        _ip(root, s["ipv4"], 4)
    if s.get("ipv6"):
        _ip(root, s["ipv6"], 6)
    return root
