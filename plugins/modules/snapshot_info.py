#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: snapshot_info
short_description: A guest's snapshots as a tree, and what they mean for migration
version_added: 0.2.0
description:
  - Lists the snapshots of one guest, parents before their children, with the current one marked.
  - Also lists the snapshots that keep the guest from migrating to another host. libvirt's QEMU driver refuses
    such a migration while the guest has any snapshot metadata on the source (C(cannot migrate domain with N
    snapshots)). Internal snapshots live inside the disk images with metadata on this host only - delete them.
    External ones are overlay files that stay usable from the destination on shared storage - delete their
    metadata only on the source and redefine it on the destination.
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.info_module
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
options:
  domain:
    description: Name of the guest.
    type: str
    required: true
seealso:
  - module: lockstep.virt.snapshot
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: The snapshots of web1
  lockstep.virt.snapshot_info:
    domain: web1
  register: snaps

- name: Names, indented by depth
  ansible.builtin.debug:
    msg: "{{ snaps.snapshots | map(attribute='name') | list }} (current: {{ snaps.current }})"
"""

RETURN = r"""
snapshots:
  description: The snapshots, depth first (a parent before its children; siblings oldest first).
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Name., type: str}
    parent: {description: Parent snapshot (null for a root)., type: str}
    children: {description: Names of its children., type: list, elements: str}
    depth: {description: Distance from its root (0 for a root)., type: int}
    created: {description: "Creation time, UTC, ISO 8601.", type: str}
    state: {description: "The guest's state when taken - running, paused, shutoff, or disk-snapshot.", type: str}
    description: {description: Description (without the module's mark)., type: str}
    managed:
      description: >-
        Whether M(lockstep.virt.snapshot) created it (what its O(lockstep.virt.snapshot#module:keep) may remove).
      type: bool
    current: {description: Whether it is the guest's current snapshot., type: bool}
    external: {description: Whether any disk (or the memory) is stored outside the images., type: bool}
    memory: {description: "Memory state - internal, external or no.", type: str}
    disks:
      description: Its disks.
      type: list
      elements: dict
      contains:
        name: {description: Disk target., type: str}
        snapshot: {description: "internal, external or no.", type: str}
        file: {description: The overlay of an external snapshot., type: str}
  sample:
    - {name: base, parent: null, children: [before-upgrade], depth: 0, created: "2025-01-01T12:00:00Z",
       state: shutoff, description: null, managed: true, current: false, external: false, memory: "no",
       disks: [{name: vda, snapshot: internal, file: null}]}
current:
  description: Name of the current snapshot, or null.
  returned: always
  type: str
migration_blockers:
  description: The snapshots that keep the guest from migrating to another host, and why.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Snapshot., type: str}
    external: {description: Whether it is external., type: bool}
    reason: {description: "Why, and what to do.", type: str}
libvirt_error:
  description: libvirt's error code, domain and message, when a libvirt call failed.
  returned: failure
  type: dict
"""


from ansible_collections.lockstep.virt.plugins.module_utils._virt.reporters.snapshot_info import (
    SNAPSHOT_INFO_ARGUMENT_SPEC,
    snapshot_info,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(
        SNAPSHOT_INFO_ARGUMENT_SPEC,
        work=lambda conn, module: snapshot_info(conn, module.params["domain"]),
        readonly=True,
    )


if __name__ == "__main__":
    main()
