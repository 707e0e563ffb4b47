#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: network
short_description: Define, start, stop, update and remove libvirt virtual networks
version_added: 0.1.0
description:
  - Manages one libvirt virtual network declaratively, from libvirt XML or from a structured O(spec).
  - Drift is detected on everything you specify, not only the name. What libvirt fills in (a UUID, the
    bridge's MAC address, C(stp)/C(delay), NAT port ranges) is never a difference. Addresses (C(<ip>)),
    forward mode, DNS, domain and MTU are compared as sets, so removing one is a change too.
  - A change to static DHCP hosts or DNS hosts only is applied live and persistently with libvirt's
    network update (LIVE and CONFIG); the network keeps running and its dnsmasq process is the same.
  - Any other change redefines the network. A running network then keeps running its old definition
    until restarted - RV(pending_restart) says so - unless O(restart_on_change=true), which restarts it
    (guests attached to it lose connectivity for a moment).
  - Networks defined from O(spec) or O(xml) carry the collection's managed mark in their C(<metadata>).
    A network defined by other means whose definition already matches is left as it is, unmarked; it gets
    the mark the first time this module redefines it.
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
  - lockstep.virt.definition
attributes:
  check_mode:
    support: full
    details: Predicts every action (define, redefine, host updates, start, stop, restart, undefine).
  diff_mode:
    support: full
    details: The diff shows state, autostart and the part of the definition you manage, before and after.
  idempotent:
    support: full
options:
  name:
    description: Name of the network.
    type: str
    required: true
  state:
    description:
      - V(present) - defined (from O(xml) or O(spec) when given); whether it runs is left alone.
        A network defined by this task is left inactive.
      - V(active) - defined and running.
      - V(inactive) - defined and stopped.
      - V(absent) - stopped and undefined. Absent already is no change.
    type: str
    choices: [present, absent, active, inactive]
    default: present
  spec:
    type: dict
    suboptions:
      forward:
        description:
          - V(nat) - guests reach the outside through the host's NAT.
          - V(route) - routed, without NAT.
          - V(open) - routed, without any firewall rules from libvirt.
          - V(isolated) - no forwarding (guests reach only each other and the host).
          - V(bridge) - guests join an existing host bridge (O(spec.bridge)); no addresses, DHCP or DNS then.
        type: str
        choices: [nat, route, bridge, open, isolated]
        default: nat
      bridge:
        description:
          - Name of the bridge device (at most 15 characters). libvirt picks a free C(virbrN) when not given.
          - With O(spec.forward=bridge), an existing host bridge.
        type: str
      mtu:
        description: MTU of the bridge.
        type: int
      domain:
        description: DNS domain of the network (dnsmasq answers for it).
        type: str
      ipv4:
        description: The network's IPv4 address (the host's address on the bridge), with DHCP.
        type: dict
        suboptions: &ip
          address:
            description: Address of the host on the network.
            type: str
            required: true
          prefix:
            description: Prefix length (V(24) for a /24).
            type: int
            required: true
          dhcp_range:
            description: Range of addresses DHCP hands out; inside the network.
            type: dict
            suboptions:
              start:
                description: First address.
                type: str
                required: true
              end:
                description: Last address.
                type: str
                required: true
          dhcp_hosts:
            description:
              - Static DHCP hosts (the whole set). Changes are applied live, without restarting the network.
              - IPv4 hosts are matched by C(mac); IPv6 hosts by C(name).
            type: list
            elements: dict
            default: []
            suboptions:
              mac:
                description: MAC address (IPv4 hosts).
                type: str
              name:
                description: Host name handed out with the address.
                type: str
              ip:
                description: Fixed address; inside the network.
                type: str
                required: true
      ipv6:
        description: The network's IPv6 address, with DHCPv6; same keys as O(spec.ipv4).
        type: dict
        suboptions: *ip
      dns_hosts:
        description: DNS host records (the whole set). Changes are applied live, without restarting the network.
        type: list
        elements: dict
        default: []
        suboptions:
          ip:
            description: Address.
            type: str
            required: true
          hostnames:
            description: Names for it.
            type: list
            elements: str
            required: true
  autostart:
    description: Whether libvirt starts the network when it starts. Left alone when not given.
    type: bool
  restart_on_change:
    description:
      - Restart a running network whose definition changed (other than DHCP and DNS hosts), so the change
        applies now. Guests attached to it lose connectivity for a moment.
      - When V(false), the change waits for the next restart and RV(pending_restart) is V(true).
    type: bool
    default: false
seealso:
  - module: lockstep.virt.network_info
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: A NAT network with DHCP, a static host and a DNS record, started at boot
  lockstep.virt.network:
    name: lab-nat
    state: active
    autostart: true
    spec:
      forward: nat
      bridge: labnat0
      domain: lab.test
      ipv4:
        address: 10.78.200.1
        prefix: 24
        dhcp_range: {start: 10.78.200.100, end: 10.78.200.199}
        dhcp_hosts:
          - {mac: "52:54:00:10:00:01", name: web1, ip: 10.78.200.10}
      dns_hosts:
        - {ip: 10.78.200.10, hostnames: [web1, www]}

- name: Another static host, added live (dnsmasq keeps running)
  lockstep.virt.network:
    name: lab-nat
    state: active
    spec:
      forward: nat
      bridge: labnat0
      domain: lab.test
      ipv4:
        address: 10.78.200.1
        prefix: 24
        dhcp_range: {start: 10.78.200.100, end: 10.78.200.199}
        dhcp_hosts:
          - {mac: "52:54:00:10:00:01", name: web1, ip: 10.78.200.10}
          - {mac: "52:54:00:10:00:02", name: db1, ip: 10.78.200.11}
      dns_hosts:
        - {ip: 10.78.200.10, hostnames: [web1, www]}

- name: An isolated network from XML, changed and restarted at once
  lockstep.virt.network:
    name: lab-isolated
    state: active
    restart_on_change: true
    xml: |
      <network>
        <name>lab-isolated</name>
        <bridge name='labiso0'/>
        <ip address='10.78.201.1' prefix='24'/>
      </network>

- name: Remove them
  lockstep.virt.network:
    name: "{{ item }}"
    state: absent
  loop: [lab-nat, lab-isolated]
"""

RETURN = r"""
network:
  description: The network after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    name: {description: Name., type: str, returned: success}
    uuid: {description: UUID (null for a network check mode would define)., type: str, returned: success}
    active: {description: Whether it runs., type: bool, returned: success}
    persistent: {description: Whether it has a persistent definition., type: bool, returned: success}
    autostart: {description: Whether it starts with libvirt., type: bool, returned: success}
    bridge: {description: Its bridge device., type: str, returned: success}
  sample: {name: lab-nat, uuid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427, active: true, persistent: true,
           autostart: true, bridge: labnat0}
actions:
  description: What was done (or would be, in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [define, autostart, start]
pending_restart:
  description: The network runs an older definition than the persistent one; the change applies at its next start.
  returned: always
  type: bool
pending_differences:
  version_added: 0.2.0
  description: Where what the network runs differs from its definition (predicted from the redefinition in check mode).
  returned: when RV(pending_restart) is true or the network was restarted for it
  type: list
  elements: str
  sample: ["/network/forward/@mode"]
differences:
  description: Where the definition differed from what you specified.
  returned: when the definition changed
  type: list
  elements: str
  sample: ["/network/forward/@mode"]
host_updates:
  description: Static DHCP host and DNS host changes applied live with libvirt's network update.
  returned: when hosts changed
  type: list
  elements: dict
  contains:
    command: {description: V(add) or V(delete)., type: str}
    section: {description: V(dhcp_host) or V(dns_host)., type: str}
    xml: {description: The host element., type: str}
libvirt_error:
  description: libvirt's C(code), C(domain) and C(message), when a libvirt call failed.
  returned: failure
  type: dict
"""


from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.network import (
    NETWORK_ARGUMENT_SPEC,
    NETWORK_MUTUALLY_EXCLUSIVE,
    NetworkManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(NETWORK_ARGUMENT_SPEC, manager=NetworkManager, mutually_exclusive=NETWORK_MUTUALLY_EXCLUSIVE)


if __name__ == "__main__":
    main()
