#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: volume_info
short_description: Facts about libvirt storage volumes
version_added: 0.1.0
description:
  - Returns path, format, capacity, allocation and backing chain of the volumes of running pools.
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.info_module
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
options:
  pool:
    description:
      - Only the volumes of this pool. Every running pool when not given.
      - A pool that does not exist fails the task.
    type: str
  name:
    description: Only the volume of this name (in O(pool) when given). An empty list when there is none.
    type: str
seealso:
  - module: lockstep.virt.volume
  - module: lockstep.virt.pool_info
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: Every volume of every running pool
  lockstep.virt.volume_info:
  register: vols

- name: Paths of the qcow2 volumes
  ansible.builtin.debug:
    msg: "{{ vols.volumes | selectattr('format', 'equalto', 'qcow2') | map(attribute='path') | list }}"
"""

RETURN = r"""
volumes:
  description: The volumes, by pool and name.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Name., type: str}
    pool: {description: Pool., type: str}
    path: {description: Path on the host., type: str}
    key: {description: libvirt's key of the volume., type: str}
    type: {description: "file, block, ...", type: str}
    format: {description: Image format., type: str}
    capacity: {description: Bytes the guest sees., type: int}
    allocation: {description: Bytes allocated on the host., type: int}
    backing: {description: "Immediate backing file (path, format), or null.", type: dict}
    backing_chain:
      description: Every backing file below the volume, nearest first.
      type: list
      elements: dict
      contains:
        path: {description: Path., type: str}
        format: {description: Format., type: str}
        volume: {description: "Volume name, when libvirt knows the file as a volume.", type: str}
        pool: {description: Its pool., type: str}
  sample:
    - {name: web1.qcow2, pool: lab-images, path: /var/lib/lockstep-lab/shared/pools/lab-images/web1.qcow2,
       key: /var/lib/lockstep-lab/shared/pools/lab-images/web1.qcow2, type: file, format: qcow2,
       capacity: 1073741824, allocation: 200704,
       backing: {path: /var/lib/lockstep-lab/shared/pools/lab-images/base.qcow2, format: qcow2},
       backing_chain: [{path: /var/lib/lockstep-lab/shared/pools/lab-images/base.qcow2, format: qcow2,
                        volume: base.qcow2, pool: lab-images}]}
libvirt_error:
  description: libvirt's C(code), C(domain) and C(message), when a libvirt call failed.
  returned: failure
  type: dict
"""


from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.volume import list_volumes
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(
        {"pool": {"type": "str"}, "name": {"type": "str"}},
        work=lambda conn, module: {
            "changed": False,
            "volumes": list_volumes(conn, module.params["pool"], module.params["name"]),
        },
        readonly=True,
    )


if __name__ == "__main__":
    main()
