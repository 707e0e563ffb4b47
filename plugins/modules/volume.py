#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: volume
short_description: Create, grow, clone, import and remove libvirt storage volumes
version_added: 0.1.0
description:
  - Manages one volume of a running libvirt storage pool.
  - A new volume is created empty (O(capacity)), as a copy-on-write overlay of O(backing_volume), as a
    copy of O(clone_from), or with the content of a file on the host (O(import_from)). These sources are
    used only when the volume is created; an existing volume is never re-copied.
  - Growing O(capacity) resizes the volume. Shrinking it is refused unless O(allow_shrink=true). Its format
    and backing volume cannot change; asking for another one is an error.
  - A name with a path separator, C(..) or a NUL is refused, and a volume whose path does not lie directly
    in its pool's directory is never resized, wiped or deleted.
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
  - lockstep.virt.sizes
attributes:
  check_mode:
    support: full
    details: Predicts every action (create, clone, import, resize, wipe, delete) and the resulting volume.
  diff_mode:
    support: full
    details: The diff shows the volume's format, capacity and backing file before and after.
  idempotent:
    support: full
options:
  pool:
    description: Name of the storage pool (it must be running).
    type: str
    required: true
  name:
    description: Name of the volume (a plain file name for directory pools).
    type: str
    required: true
  state:
    description:
      - V(present) - the volume exists with at least O(capacity).
      - V(absent) - the volume is deleted (see O(wipe)). Absent already is no change.
    type: str
    choices: [present, absent]
    default: present
  capacity:
    description:
      - Size the guest sees, a size (see the note on sizes); a number without a unit is bytes.
      - Required to create an empty volume; an overlay, clone or import defaults to its source's size.
      - libvirt rounds qcow2 sizes up to whole 512-byte sectors; that is not a difference.
    type: raw
  allocation:
    description:
      - Space allocated up front when the volume is created (V(0) for a sparse volume). Not compared afterwards.
      - A size (see the note on sizes); a number without a unit is bytes.
    type: raw
  format:
    description:
      - Image format. libvirt's default for the pool (raw for directory pools) when not given for an empty volume;
        an overlay is qcow2; a clone or an import keeps its source's format.
      - An existing volume of another format is an error (formats are not converted).
    type: str
    choices: [qcow2, raw]
  backing_volume:
    description:
      - Create the volume as a qcow2 overlay on this volume - a name in O(pool), or the absolute path of a
        volume libvirt knows. The backing volume is only read.
    type: str
  clone_from:
    description: Create the volume as a full copy of this volume - a name in O(pool), or the absolute path of a volume.
    type: str
  import_from:
    description:
      - Create the volume with the content of this file on the hypervisor (qcow2 or raw, detected from its
        header; O(format), when given, must match). The file is only read.
    type: path
  wipe:
    description: With O(state=absent), overwrite the volume's data before deleting it.
    type: bool
    default: false
  allow_shrink:
    description: Allow O(capacity) smaller than the volume's current size (the data past the new end is lost).
    type: bool
    default: false
notes:
  - O(backing_volume), O(clone_from) and O(import_from) are mutually exclusive.
seealso:
  - module: lockstep.virt.pool
  - module: lockstep.virt.volume_info
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: A pool for the examples
  lockstep.virt.pool:
    name: lab-images
    state: active
    spec:
      type: dir
      path: /var/lib/lockstep-lab/shared/pools/lab-images

- name: An empty 1 GiB qcow2 volume
  lockstep.virt.volume:
    pool: lab-images
    name: base.qcow2
    capacity: 1G
    format: qcow2

- name: Grown to 2 GiB (shrinking would need allow_shrink)
  lockstep.virt.volume:
    pool: lab-images
    name: base.qcow2
    capacity: 2G

- name: A copy-on-write overlay for one guest
  lockstep.virt.volume:
    pool: lab-images
    name: web1.qcow2
    backing_volume: base.qcow2

- name: A full copy
  lockstep.virt.volume:
    pool: lab-images
    name: web2.qcow2
    clone_from: base.qcow2

- name: Wipe and remove them
  lockstep.virt.volume:
    pool: lab-images
    name: "{{ item }}"
    state: absent
    wipe: true
  loop: [web1.qcow2, web2.qcow2, base.qcow2]
"""

RETURN = r"""
volume:
  description: The volume after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    name: {description: Name., type: str, returned: success}
    pool: {description: Pool., type: str, returned: success}
    path: {description: Path on the host (null for a volume check mode would create)., type: str, returned: success}
    key: {description: libvirt's key of the volume., type: str, returned: success}
    type: {description: "file, block, ...", type: str, returned: success}
    format: {description: Image format., type: str, returned: success}
    capacity: {description: Bytes the guest sees., type: int, returned: success}
    allocation: {description: Bytes allocated on the host., type: int, returned: success}
    backing: {description: "Backing file (path, format), or null.", type: dict, returned: success}
  sample: {name: web1.qcow2, pool: lab-images, path: /var/lib/lockstep-lab/shared/pools/lab-images/web1.qcow2,
           key: /var/lib/lockstep-lab/shared/pools/lab-images/web1.qcow2, type: file, format: qcow2,
           capacity: 2147483648, allocation: 200704,
           backing: {path: /var/lib/lockstep-lab/shared/pools/lab-images/base.qcow2, format: qcow2}}
actions:
  description: What was done (or would be, in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [create_overlay]
libvirt_error:
  description: libvirt's C(code), C(domain) and C(message), when a libvirt call failed.
  returned: failure
  type: dict
"""


from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.volume import (
    VOLUME_ARGUMENT_SPEC,
    VOLUME_MUTUALLY_EXCLUSIVE,
    VolumeManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(VOLUME_ARGUMENT_SPEC, manager=VolumeManager, mutually_exclusive=VOLUME_MUTUALLY_EXCLUSIVE)


if __name__ == "__main__":
    main()
