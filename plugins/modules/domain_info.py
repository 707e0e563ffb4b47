#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: domain_info
short_description: Facts about libvirt guests, their disks, leases and addresses
version_added: 0.1.0
description:
  - Reports all, one, or a filtered set of domains of a hypervisor - state, UUID, memory, vCPUs, disks with
    their lease resource and whether it is held, VM leases, interfaces (with addresses on request),
    autostart, persistence, whether this collection manages the domain, and optionally the inactive XML.
  - Lease files are probed with F_GETLK; C(held_here) tells whether this host's virtlockd holds one.
  - With sanlock, leases are probed through this host's sanlock daemon and the leases' leader records on
    shared storage; C(holder_host) names the host that holds one, and C(held) is null when that cannot be
    verified.
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.info_module
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
  - lockstep.virt.info
options:
  pattern:
    description: Only domains whose name matches this shell-style pattern (V(web*)). Mutually exclusive with O(name).
    type: str
  state:
    description: Only domains in one of these states.
    type: list
    elements: str
    choices: [running, paused, shutoff, crashed, pmsuspended, shutdown, blocked, nostate]
  managed:
    description: V(true) - only domains this collection manages; V(false) - only the others. All when not given.
    type: bool
  addresses:
    description:
      - Where to read the IP addresses of running guests' interfaces - V(lease) (libvirt network DHCP leases),
        V(agent) (qemu guest agent, which must run in the guest), V(arp) (host ARP table), or V(none).
    type: str
    choices: [none, lease, agent, arp]
    default: none
  inactive_xml:
    description: Also return each domain's inactive (persistent) XML.
    type: bool
    default: false
seealso:
  - module: lockstep.virt.domain
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: All guests of the hypervisor
  lockstep.virt.domain_info:
  register: guests

- name: Running guests whose name starts with web, with their DHCP addresses
  lockstep.virt.domain_info:
    pattern: "web*"
    state: [running]
    addresses: lease
  register: web

- name: Every VM lease of the running web guests is held by this host's virtlockd
  ansible.builtin.assert:
    that:
      - web.domains | map(attribute='leases') | flatten | rejectattr('held_here') | list | length == 0

- name: The definition of one guest
  lockstep.virt.domain_info:
    name: db1
    inactive_xml: true
  register: db1

# Ad hoc, from the checkout: ansible hypervisors -m lockstep.virt.domain_info
"""

RETURN = r"""
count:
  description: Number of domains returned.
  returned: always
  type: int
domains:
  description: The selected domains, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: "Name.", type: str}
    uuid: {description: "UUID.", type: str}
    id: {description: "libvirt id while running, else null.", type: int}
    state: {description: "running, paused, shutoff, crashed, pmsuspended, ...", type: str}
    persistent: {description: "Has a persistent definition.", type: bool}
    autostart: {description: "Starts with libvirt.", type: bool}
    managed: {description: "Carries this collection's managed mark.", type: bool}
    type: {description: "Domain type (qemu, kvm, ...).", type: str}
    memory_mib: {description: "Maximum memory in MiB.", type: int}
    current_memory_mib: {description: "Current memory in MiB.", type: int}
    vcpus: {description: "Number of vCPUs.", type: int}
    disks:
      description: Disks with their lease.
      type: list
      elements: dict
      contains:
        target: {description: "Target device (vda).", type: str}
        device: {description: "disk, cdrom, ...", type: str}
        type: {description: "file, block, volume, network.", type: str}
        path: {description: "Source path (a volume's path when resolvable).", type: str}
        format: {description: "Image format.", type: str}
        bus: {description: "Bus.", type: str}
        readonly: {description: "Read-only.", type: bool}
        shareable: {description: "Shareable.", type: bool}
        pool: {description: "Pool of a volume disk.", type: str}
        volume: {description: "Volume of a volume disk.", type: str}
        lease_resource: {description: "The lease file of the disk, null when not leased.", type: str}
        held: {description: "Whether the lease is held (null when it cannot be probed).", type: bool}
        held_here: {description: "Whether this host's virtlockd holds it.", type: bool}
        holder_pid: {description: "Holder's pid.", type: int}
        holder_host: {description: "The holder's host name (sanlock), else null.", type: str, version_added: 0.2.0}
    leases:
      description:
        - Leases of the domain (disk leases and VM leases) and who holds them, each with the fields of
          RV(lockstep.virt.domain#module:leases) (C(lockspace) is the lockspace directory).
      type: list
      elements: dict
    interfaces:
      description: Network interfaces.
      type: list
      elements: dict
      contains:
        type: {description: "network, bridge, ...", type: str}
        mac: {description: "MAC address.", type: str}
        network: {description: "libvirt network.", type: str}
        bridge: {description: "Host bridge.", type: str}
        model: {description: "NIC model.", type: str}
        device: {description: "Host-side device while running.", type: str}
        addresses:
          description: Addresses from O(addresses) ({address, prefix, type}).
          type: list
          elements: dict
    metadata: {description: "Key/values set with the domain module's spec.metadata.", type: dict}
    handoff:
      version_added: 0.2.0
      description:
        - The handoff marker of lockstep.virt.migrate (C(source), C(dest), C(was), C(started), ...) and a C(note)
          saying what it means - a paused guest carrying it was left by a migration whose handoff did not
          finish, and the same migrate task run again finishes it. Null without a marker.
      type: dict
    inactive_xml: {description: "Inactive XML.", type: str, returned: when O(inactive_xml=true)}
lock_config:
  description: The host's lock manager configuration as read from the driver's config files.
  returned: always
  type: dict
  sample: {manager: lockd, auto_disk_leases: true, require_lease_for_disks: false,
           file_lockspace_dir: /var/lib/lockstep-lab/shared/lockd, lvm_lockspace_dir: null, scsi_lockspace_dir: null,
           lock_conf: /etc/libvirt/qemu.conf, lockd_conf: /etc/libvirt/qemu-lockd.conf, local: true}
libvirt_error:
  version_added: 0.2.0
  description: libvirt's C(code), C(domain) and C(message), when a libvirt call failed.
  returned: failure
  type: dict
"""


from ansible_collections.lockstep.virt.plugins.module_utils._virt.reporters.domain_info import (
    DOMAIN_INFO_ARGUMENT_SPEC,
    DOMAIN_INFO_MUTUALLY_EXCLUSIVE,
    DomainInfoReporter,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(
        DOMAIN_INFO_ARGUMENT_SPEC,
        work=lambda conn, module: DomainInfoReporter(conn, module.params).run(),
        mutually_exclusive=DOMAIN_INFO_MUTUALLY_EXCLUSIVE,
    )


if __name__ == "__main__":
    main()
