#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: network_info
short_description: Facts about libvirt virtual networks
version_added: 0.1.0
description:
  - Returns state, bridge, forward mode, addresses, static hosts and DHCP leases of one or all networks.
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.info_module
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
  - lockstep.virt.info
seealso:
  - module: lockstep.virt.network
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: Every network of the host
  lockstep.virt.network_info:
  register: nets

- name: Names of the running ones
  ansible.builtin.debug:
    msg: "{{ nets.networks | selectattr('active') | map(attribute='name') | list }}"
"""

RETURN = r"""
networks:
  description: The networks, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Name., type: str}
    uuid: {description: UUID., type: str}
    active: {description: Whether it runs., type: bool}
    persistent: {description: Whether it has a persistent definition., type: bool}
    autostart: {description: Whether it starts with libvirt., type: bool}
    bridge: {description: Bridge device., type: str}
    forward_mode: {description: "nat, route, open, bridge, ... or isolated (no forwarding).", type: str}
    mtu: {description: MTU when set., type: int}
    domain: {description: DNS domain when set., type: str}
    managed: {description: Whether it carries the collection's managed mark., type: bool}
    addresses:
      description: The network's addresses.
      type: list
      elements: dict
      contains:
        family: {description: ipv4 or ipv6., type: str}
        address: {description: Host address on the network., type: str}
        prefix: {description: Prefix length., type: int}
        dhcp_range: {description: "DHCP range (start, end) or null.", type: dict}
        dhcp_hosts: {description: "Static hosts (mac, name, ip).", type: list, elements: dict}
    dns_hosts: {description: "DNS host records (ip, hostnames).", type: list, elements: dict}
    dhcp_leases:
      description: Current DHCP leases (running networks).
      type: list
      elements: dict
      contains:
        mac: {description: Client MAC., type: str}
        ip: {description: Leased address., type: str}
        prefix: {description: Prefix length., type: int}
        hostname: {description: Client host name., type: str}
        client_id: {description: DHCP client id., type: str}
        expiry: {description: Expiry (seconds since the epoch)., type: int}
    xml: {description: The persistent definition., type: str}
  sample:
    - name: lab-nat
      uuid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427
      active: true
      persistent: true
      autostart: true
      bridge: labnat0
      forward_mode: nat
      mtu: null
      domain: lab.test
      managed: true
      addresses:
        - {family: ipv4, address: 10.78.200.1, prefix: 24,
           dhcp_range: {start: 10.78.200.100, end: 10.78.200.199}, dhcp_hosts: []}
      dns_hosts: []
      dhcp_leases: []
libvirt_error:
  description: libvirt's C(code), C(domain) and C(message), when a libvirt call failed.
  returned: failure
  type: dict
"""


from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.network import list_networks
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(
        {"name": {"type": "str"}},
        work=lambda conn, module: {"changed": False, "networks": list_networks(conn, module.params["name"])},
        readonly=True,
    )


if __name__ == "__main__":
    main()
