#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: export
short_description: A host's networks, storage pools, volumes and guests as the options of lockstep.virt.apply
version_added: 0.3.0
description:
  - Reads what is on a libvirt host and returns it as RV(apply) - a dictionary shaped exactly as the options
    of M(lockstep.virt.apply) (O(lockstep.virt.apply#module:networks), O(lockstep.virt.apply#module:pools),
    O(lockstep.virt.apply#module:volumes), O(lockstep.virt.apply#module:domains)), so that objects made by
    hand, by C(virsh) or by other tools can be taken under management. Its C(domains) list is also what the
    C(lockstep.virt.guests) role takes as C(guests_list).
  - M(lockstep.virt.apply) with RV(apply) on the same host changes nothing; on a host that has none of the
    objects it creates them, each in the state it is in here (a guest running, paused or shut off; a
    network or pool active or not) and with its autostart.
  - Each network, storage pool and guest is exported as a structured C(spec) only when its module, run in
    check mode on this host with that spec - the same code and the same comparison M(lockstep.virt.apply)
    runs - would change nothing, and when the spec expresses every element and attribute of its
    definition (apart from what libvirt adds on its own - addresses, controllers, the PS/2 input devices,
    the memory balloon, video and audio devices). Otherwise its inactive XML is exported (C(xml)).
    O(prefer=xml) exports XML always. RV(objects) says which form each object got, and why.
  - Volumes are exported as definitions only - capacity, format and backing volume, as
    M(lockstep.virt.volume) takes them; their content is never read or exported. On another host a volume
    is created empty (or as an overlay of its backing volume), so a guest's data has to be copied or
    migrated (M(lockstep.virt.migrate)) separately.
  - Passwords are never exported. A console's C(passwd) (or any C(password) attribute, C(<passwd>) element
    or disk C(<cookies>)) is left out of the XML and a RV(warnings) entry names the object; the objects
    created from the export elsewhere have no console password until one is set.
  - Transient objects (running without a persistent definition) are skipped and listed in RV(skipped) -
    applying them would define them, which is a change. Define them first (C(virsh dumpxml) then
    C(virsh define)) to export them.
  - Guests and networks defined by other means carry no managed mark; M(lockstep.virt.apply) leaves such an
    object as it is when its definition matches (and so never prunes it) and writes the mark the first
    time it redefines it for another difference.
  - What a definition refers to outside the export (a bridge of the host, a disk image outside a storage
    pool, a pool's source device) must exist on a host the export is applied to.
  - Nothing on the host is changed.
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.info_module
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
options:
  include:
    description:
      - The kinds of object to export. The kinds left out are not in RV(apply) at all, so
        M(lockstep.virt.apply) neither looks at them nor prunes them.
      - A guest refers to its networks, pools and volumes; on another host they have to be there (exported
        too, or made otherwise) before the guest is applied.
    type: list
    elements: str
    choices: [networks, pools, volumes, domains]
    default: [networks, pools, volumes, domains]
  names:
    description:
      - Only the objects whose name matches - shell-style patterns (C(fnmatch), case-sensitive), or plain names.
      - A list applies to every kind; a dictionary with the keys C(networks), C(pools), C(volumes) and
        C(domains) gives each kind its own list (a kind not in the dictionary is exported whole).
      - A volume is matched by its own name (not its pool's); its pool needs to be selected for its items
        to apply on another host.
      - Not given - every object of the kinds O(include) names.
    type: raw
  prefer:
    description:
      - V(spec) - a network, storage pool or guest is exported as a structured C(spec) where that gives
        exactly its definition (see the description), otherwise as XML.
      - V(xml) - always as its inactive XML.
      - Volumes are exported as the options of M(lockstep.virt.volume) either way.
    type: str
    choices: [spec, xml]
    default: spec
notes:
  - The connection is opened read-write (a guest's definition is read with its secrets only to find and drop
    them); nothing is changed.
seealso:
  - module: lockstep.virt.apply
  - module: lockstep.virt.domain_info
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: Everything on the host, as the options of lockstep.virt.apply
  lockstep.virt.export:
  register: host

- name: Which objects came out as a spec and which as XML
  ansible.builtin.debug:
    msg: "{{ host.objects | map(attribute='source') | list }}"

- name: Taking the host under management changes nothing
  lockstep.virt.apply:
    networks: "{{ host.apply.networks }}"
    pools: "{{ host.apply.pools }}"
    volumes: "{{ host.apply.volumes }}"
    domains: "{{ host.apply.domains }}"

- name: Only the web guests and their network, written to a variables file
  lockstep.virt.export:
    include: [networks, domains]
    names:
      networks: [default]
      domains: ["web-*"]
  register: web

- name: The guests as the guests role takes them
  ansible.builtin.copy:
    content: "{{ {'guests_list': web.apply.domains} | to_nice_yaml }}"
    dest: /tmp/web-guests.yml
    mode: "0600"
  delegate_to: localhost
"""

RETURN = r"""
apply:
  description:
    - The options of M(lockstep.virt.apply) that bring a host to what this one has, with one key per kind
      of O(include) (an empty list where the host has none of that kind).
    - Each item is an item of the matching option - C(name), C(state), C(autostart) and either C(spec) or
      C(xml) for networks, pools and domains; C(pool), C(name), C(capacity) (bytes) and C(format) and
      C(backing_volume) where there is one, for volumes.
  returned: always
  type: dict
  contains:
    networks: {description: "The networks (state active or inactive).", type: list, elements: dict,
               returned: when networks are included}
    pools: {description: "The storage pools (state active or inactive).", type: list, elements: dict,
            returned: when pools are included}
    volumes: {description: "The volumes of the active pools; a backing volume before its overlays.", type: list,
              elements: dict, returned: when volumes are included}
    domains: {description: "The guests (state running, paused or shutdown).", type: list, elements: dict,
              returned: when domains are included}
  sample:
    networks:
      - {name: lab-net, state: active, autostart: true,
         spec: {forward: nat, bridge: virbr1, ipv4: {address: 10.78.0.1, prefix: 24, dhcp_hosts: []}}}
    pools:
      - {name: guests, state: active, autostart: false, spec: {type: dir, path: /var/lib/libvirt/images/guests}}
    volumes:
      - {pool: guests, name: web1.qcow2, capacity: 8589934592, format: qcow2}
    domains:
      - {name: web1, state: running, autostart: false, spec: {type: kvm, memory: 1024, vcpus: 1, features: [acpi, apic],
         disks: [{type: volume, pool: guests, volume: web1.qcow2, target: vda, bus: virtio}],
         interfaces: [{network: lab-net, mac: "52:54:00:12:34:56", model: virtio}]}}
      - {name: legacy, state: shutdown, autostart: false, xml: "<domain type='kvm'>...</domain>"}
objects:
  description: How each exported object was exported, in the order of RV(apply).
  returned: always
  type: list
  elements: dict
  contains:
    kind: {description: "network, pool, volume or domain.", type: str, returned: always}
    name: {description: Its name., type: str, returned: always}
    pool: {description: The pool of a volume., type: str, returned: for volumes}
    source: {description: "V(spec), V(xml), or V(options) for a volume.", type: str, returned: always}
    reason: {description: "Why it is not a spec (the part of its definition a spec cannot express, what its module
             would change with one, or O(prefer=xml)); for a volume, a format M(lockstep.virt.volume) does not
             create.", type: str, returned: when there is one}
    unchanged: {description: "V(false) when even the exported form is one its module would change something with on
                this host (a warning says what); absent otherwise.", type: bool, returned: when false}
  sample:
    - {kind: domain, name: web1, source: spec}
    - {kind: domain, name: legacy, source: xml, reason: "the spec cannot express /domain/devices/rng"}
skipped:
  description: Objects left out of the export, with the reason (a transient object, one that went away while it
    was read).
  returned: always
  type: list
  elements: dict
  sample:
    - {kind: domain, name: scratch, reason: "transient (it has no definition; apply would make it persistent)"}
warnings:
  description: What the export leaves out that the host has - each entry names the object (a console password).
  returned: when there is one
  type: list
  elements: str
"""

from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.export import (
    EXPORT_ARGUMENT_SPEC,
    ExportManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(EXPORT_ARGUMENT_SPEC, manager=ExportManager)


if __name__ == "__main__":
    main()
