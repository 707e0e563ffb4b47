#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: pool
short_description: Define, build, start, stop and remove libvirt storage pools
version_added: 0.1.0
description:
  - Manages one libvirt storage pool declaratively, from libvirt XML or from a structured O(spec).
  - Drift is detected on everything you specify (type, target path, permissions, source), not only the
    name; what libvirt fills in (a UUID, capacity, allocation, default permissions) is never a difference.
  - The pool's storage is built (a directory created, a file system made, a volume group created) only
    when this task defines the pool and only when it needs it; an existing pool is never built again.
    File systems and volume groups are built without overwriting existing data.
  - A change to a running pool's definition applies at its next start, reported with RV(pending_restart),
    unless O(restart_on_change=true).
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
  - lockstep.virt.definition
attributes:
  check_mode:
    support: full
    details: Predicts every action (define, build, start, stop, delete, undefine) without doing it.
  diff_mode:
    support: full
    details: The diff shows state, autostart and the part of the definition you manage, before and after.
  idempotent:
    support: full
    details: O(refresh=true) rescans the pool but is not reported as a change.
options:
  name:
    description: Name of the pool.
    type: str
    required: true
  state:
    description:
      - V(present) - defined (and built when new); whether it runs is left alone. A new pool is left inactive.
      - V(active) - defined and running.
      - V(inactive) - defined and stopped.
      - V(absent) - stopped and undefined; its storage and volumes are kept.
      - V(deleted) - stopped, its storage removed (the target directory, the volume group, ...) and undefined.
        Refused while the pool still holds volumes.
    type: str
    choices: [present, absent, active, inactive, deleted]
    default: present
  spec:
    type: dict
    suboptions:
      type:
        description:
          - V(dir) - a directory (O(spec.path)).
          - V(fs) - a block device with a file system mounted on O(spec.path) (O(spec.source.devices), one).
          - V(netfs) - a network file system (O(spec.source.hosts), O(spec.source.dir)) mounted on O(spec.path).
          - V(logical) - an LVM volume group (O(spec.source.name), built from O(spec.source.devices) when given).
          - V(iscsi) - an iSCSI target (O(spec.source.hosts), O(spec.source.devices) = the target IQN).
          - V(rbd) - a Ceph RBD pool (O(spec.source.hosts), O(spec.source.name), O(spec.source.auth)).
          - Which ones work depends on the storage backends of the host's libvirt.
        type: str
        choices: [dir, fs, netfs, logical, iscsi, rbd]
        default: dir
      path:
        description:
          - Target path - the directory of a dir pool, the mount point of fs and netfs pools; for logical pools
            C(/dev/<name>) by default. Must not be an existing file.
        type: str
      permissions:
        description: Permissions of the target directory, set when it is built.
        type: dict
        suboptions:
          mode:
            description: Octal mode, as a string (V('0755')).
            type: str
          owner:
            description: Owner uid.
            type: int
          group:
            description: Group gid.
            type: int
          label:
            description: Security label.
            type: str
      source:
        description: Where the storage comes from (not for dir pools).
        type: dict
        suboptions:
          hosts:
            description: Servers, as C(name) or C(name:port).
            type: list
            elements: str
            default: []
          dir:
            description: Exported directory (netfs).
            type: str
          devices:
            description: Block devices (fs, logical) or the target IQN (iscsi).
            type: list
            elements: str
            default: []
          name:
            description: Volume group (logical) or Ceph pool (rbd) name.
            type: str
          format:
            description: Source format (V(ext4), V(nfs), V(auto), V(lvm2), ...).
            type: str
          initiator:
            description: Initiator IQN (iscsi).
            type: str
          auth:
            description: Authentication (rbd, iscsi) with a libvirt secret.
            type: dict
            suboptions:
              type:
                description: V(ceph) for rbd, V(chap) for iscsi.
                type: str
                choices: [ceph, chap]
                required: true
              username:
                description: User name.
                type: str
                required: true
              secret_uuid:
                description: UUID of the libvirt secret.
                type: str
              secret_usage:
                description: Usage name of the libvirt secret.
                type: str
  autostart:
    description: Whether libvirt starts the pool when it starts. Left alone when not given.
    type: bool
  build:
    description:
      - Build the pool's storage when this task defines it and it needs building (a missing directory,
        a file system or volume group to create). V(false) never builds.
    type: bool
    default: true
  refresh:
    description: Rescan a running pool's volumes (for files added behind libvirt's back). Not reported as a change.
    type: bool
    default: false
  restart_on_change:
    description: Restart a running pool whose definition changed, so the change applies now.
    type: bool
    default: false
notes:
  - The C(<capacity>), C(<allocation>) and C(<available>) of O(xml) are ignored.
seealso:
  - module: lockstep.virt.pool_info
  - module: lockstep.virt.volume
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: A directory pool on the lab's shared storage, built and started
  lockstep.virt.pool:
    name: lab-images
    state: active
    autostart: true
    spec:
      type: dir
      path: /var/lib/lockstep-lab/shared/pools/lab-images
      permissions: {mode: "0755", owner: 0, group: 0}

- name: Pick up files copied into it by hand
  lockstep.virt.pool:
    name: lab-images
    state: active
    refresh: true

- name: A pool from XML, per host
  lockstep.virt.pool:
    name: local-images
    state: active
    xml: |
      <pool type='dir'>
        <name>local-images</name>
        <target><path>/var/lib/libvirt/images/local-images</path></target>
      </pool>

- name: Remove the pools; the directories go too (they must be empty)
  lockstep.virt.pool:
    name: "{{ item }}"
    state: deleted
  loop: [lab-images, local-images]
"""

RETURN = r"""
pool:
  description: The pool after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    name: {description: Name., type: str, returned: success}
    uuid: {description: UUID (null for a pool check mode would define)., type: str, returned: success}
    state: {description: "inactive, building, running, degraded or inaccessible.", type: str, returned: success}
    active: {description: Whether it runs., type: bool, returned: success}
    persistent: {description: Whether it has a persistent definition., type: bool, returned: success}
    autostart: {description: Whether it starts with libvirt., type: bool, returned: success}
    type: {description: Pool type., type: str, returned: success}
    path: {description: Target path., type: str, returned: success}
    capacity: {description: Bytes (0 while inactive)., type: int, returned: success}
    allocation: {description: Bytes used., type: int, returned: success}
    available: {description: Bytes free., type: int, returned: success}
  sample: {name: lab-images, uuid: 0329e4e2-e75d-4910-856e-5618882f939f, state: running, active: true,
           persistent: true, autostart: true, type: dir, path: /var/lib/lockstep-lab/shared/pools/lab-images,
           capacity: 270553174016, allocation: 23678308352, available: 246874865664}
actions:
  description: What was done (or would be, in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [define, build, autostart, start]
pending_restart:
  description: The pool runs an older definition than the persistent one; the change applies at its next start.
  returned: always
  type: bool
pending_differences:
  version_added: 0.2.0
  description: Where what the pool runs differs from its definition (predicted from the redefinition in check mode).
  returned: when RV(pending_restart) is true or the pool was restarted for it
  type: list
  elements: str
  sample: ["/pool/target/path/text()"]
refreshed:
  description: Whether the pool was rescanned (O(refresh=true)).
  returned: always
  type: bool
differences:
  description: Where the definition differed from what you specified.
  returned: when the definition changed
  type: list
  elements: str
  sample: ["/pool/target/path/text()"]
libvirt_error:
  description: libvirt's C(code), C(domain) and C(message), when a libvirt call failed.
  returned: failure
  type: dict
"""


from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.pool import (
    POOL_ARGUMENT_SPEC,
    POOL_MUTUALLY_EXCLUSIVE,
    PoolManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(POOL_ARGUMENT_SPEC, manager=PoolManager, mutually_exclusive=POOL_MUTUALLY_EXCLUSIVE)


if __name__ == "__main__":
    main()
