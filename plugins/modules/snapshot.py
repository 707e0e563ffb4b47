#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: snapshot
short_description: Create, delete and revert guest snapshots, with the leases kept right
version_added: 0.2.0
description:
  - Manages one snapshot of one libvirt guest - V(present), V(absent) or V(reverted) - and, with O(keep), removes
    the oldest of the snapshots this module created beyond that number.
  - Snapshots this module creates carry a mark on the last line of their description
    (C([managed by lockstep.virt.snapshot])); O(keep) never removes a snapshot without it.
  - A revert rewrites the guest's disks, so it is refused before anything changes when a lease of the
    snapshot's definition is held by anyone but this guest running here (the guest running on another host of a
    shared lockspace). A snapshot taken while the guest ran is reverted paused (no lease held) and then resumed
    the way O(lockstep.virt.domain#module:lock.acquire=after_create) starts a guest - the lock manager takes the
    leases as the vCPUs start, they are verified, and the guest holds its leases after the revert exactly when it
    runs. If the resume is refused because a lease became busy, a guest that was shut off before is destroyed
    again (it held nothing) and one that ran is left paused, and the task fails naming the lease.
  - After a snapshot of a running guest (QEMU stops its vCPUs for it, and libvirt releases and retakes the
    leases), the leases are verified again and recorded.
  - Migration - libvirt refuses to migrate a guest to another host while it has any snapshot metadata, internal or
    external. See RV(lockstep.virt.snapshot_info#module:migration_blockers).
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
attributes:
  check_mode:
    support: full
    details: Predicts create, delete, prune and revert; a revert whose leases are busy is refused in check mode too.
  diff_mode:
    support: full
    details: The snapshot's name, state, description and whether it is current, before and after.
  idempotent:
    support: partial
    details: >-
      V(present) and V(absent) are idempotent. V(reverted) is an action, like a service restart: it always reverts
      and reports C(changed=true), also when the snapshot is the current one and the guest is in the state it was
      taken in, because whether the guest changed since (an upgrade in a guest that kept running) cannot be read
      from libvirt's metadata. Make it conditional in the play (C(when:)) where a rollback is not wanted.
options:
  domain:
    description: Name of the guest.
    type: str
    required: true
  name:
    description: Name of the snapshot. May be left out only with O(state=present) and O(keep), to prune.
    type: str
  state:
    description:
      - V(present) - the snapshot exists; created when missing (it becomes the current one).
      - V(absent) - deleted; its children are kept, re-parented to its parent as libvirt does.
      - "V(reverted) - the guest is reverted to it, every time (an action: always C(changed=true))."
    type: str
    choices: [present, absent, reverted]
    default: present
  description:
    description: Description. An existing snapshot's description is changed to it (its metadata is redefined).
    type: str
  disk_only:
    description:
      - An external snapshot - each disk gets a new qcow2 overlay beside its image (named after the image and
        the snapshot), which the guest writes from now on; the image becomes its read-only backing file. A disk
        that is a volume of a directory pool gets its overlay in that pool.
      - V(false) - an internal snapshot, stored inside the (qcow2) images, with the memory of a running guest.
    type: bool
    default: false
  memory:
    description:
      - Save the memory of the running guest with the snapshot. Internal snapshots of a running guest always do
        (V(false) is refused for them); a shut-off guest has none; V(disk_only) snapshots never do.
    type: bool
  quiesce:
    description:
      - Freeze the guest's file systems through the QEMU guest agent during a O(disk_only) snapshot. Fails, before
        anything changes, when the guest has no agent channel or its agent is not connected.
    type: bool
    default: false
  keep:
    description:
      - Keep at most this many snapshots created by this module for the guest; the oldest are deleted first.
        The snapshot named by O(name) is never among them.
    type: int
  lock:
    description: How leases are checked when a revert resumes the guest (as in M(lockstep.virt.domain)).
    type: dict
    default: {}
    suboptions:
      required:
        description: Fail (and leave the guest paused) when it would run without holding its leases here.
        type: bool
        default: false
      acquire_timeout:
        description: Seconds to keep retrying a resume refused with "resource busy".
        type: int
        default: 0
      verify:
        description: Probe the leases after the resume and record the result.
        type: bool
        default: true
seealso:
  - module: lockstep.virt.snapshot_info
  - module: lockstep.virt.domain
  - name: libvirt snapshot XML format
    description: Internal and external snapshots.
    link: https://libvirt.org/formatsnapshot.html
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: A snapshot before an upgrade, keeping the last three
  lockstep.virt.snapshot:
    domain: web1
    name: before-upgrade-{{ ansible_date_time.date | default('today') }}
    description: before the upgrade
    keep: 3

- name: Back to it if the upgrade went wrong
  lockstep.virt.snapshot:
    domain: web1
    name: before-upgrade-{{ ansible_date_time.date | default('today') }}
    state: reverted
    lock:
      required: true
  register: reverted

- name: The lease steps of the revert
  ansible.builtin.debug:
    msg: "{{ reverted.lock_checkpoints | map(attribute='name') | list }}"

- name: Delete it
  lockstep.virt.snapshot:
    domain: web1
    name: before-upgrade-{{ ansible_date_time.date | default('today') }}
    state: absent
"""

RETURN = r"""
snapshot:
  description:
    - The snapshot after the task (predicted in check mode); null when absent.
    - Its keys are those of RV(lockstep.virt.snapshot_info#module:snapshots).
  returned: always
  type: dict
  sample: {name: before-upgrade, parent: null, created: "2025-01-01T12:00:00Z", state: running,
           description: before the upgrade, managed: true, current: true, external: false, memory: internal,
           disks: [{name: vda, snapshot: internal, file: null}]}
removed:
  description: Snapshots deleted by O(keep), oldest first.
  returned: always
  type: list
  elements: str
actions:
  description: What was done (or would be, in check mode) - create, redescribe, delete, prune, revert.
  returned: always
  type: list
  elements: str
  sample: [create, prune]
domain:
  description: The guest after the task - name, uuid, id, state, persistent, autostart.
  returned: success
  type: dict
lock_checkpoints:
  description: Ordered checkpoints of the lease-relevant steps, as M(lockstep.virt.domain) returns them.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: >-
        snapshot_created, snapshot_deleted, revert_refused, reverted_paused, reverted, resumed, acquire_failed,
        leases_verified, running, paused, destroyed_paused, leases_released.
      type: str
    host: {description: "Hypervisor host name.", type: str}
    at:
      description: When it happened (UTC, ISO 8601, milliseconds), taken from what saw it; the list is ordered by it.
      type: str
      sample: "2025-01-01T12:00:00.123Z"
    ok: {description: "Whether the step succeeded as expected.", type: bool}
    resources: {description: "Lease files concerned.", type: list, elements: str}
    source:
      description: What saw it - C(event) (a libvirt event), C(probe) (a lease or state probe), C(api) (a call).
      type: str
    verified: {description: "Whether the claim was checked (a probe, a read back); C(check) says how.", type: bool}
    check: {description: "What checked the claim, null when nothing did.", type: str}
    detail: {description: "Explanation.", type: str}
leases:
  description: The guest's leases and who holds them, as M(lockstep.virt.domain) returns them.
  returned: success
  type: list
  elements: dict
libvirt_error:
  description: libvirt's error code, domain and message, when a libvirt call failed.
  returned: failure
  type: dict
"""


from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.snapshot import (
    SNAPSHOT_ARGUMENT_SPEC,
    SnapshotManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(SNAPSHOT_ARGUMENT_SPEC, manager=SnapshotManager)


if __name__ == "__main__":
    main()
