#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: pool_info
short_description: Facts about libvirt storage pools
version_added: 0.1.0
description:
  - Returns state, type, target, capacity, allocation, available space and volume names of one or all pools.
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.info_module
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
  - lockstep.virt.info
seealso:
  - module: lockstep.virt.pool
  - module: lockstep.virt.volume_info
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: Every storage pool of the host
  lockstep.virt.pool_info:
  register: pools

- name: Free space per running pool
  ansible.builtin.debug:
    msg: "{{ pools.pools | selectattr('active') | items2dict(key_name='name', value_name='available') }}"
"""

RETURN = r"""
pools:
  description: The pools, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Name., type: str}
    uuid: {description: UUID., type: str}
    state: {description: "inactive, building, running, degraded or inaccessible.", type: str}
    active: {description: Whether it runs., type: bool}
    persistent: {description: Whether it has a persistent definition., type: bool}
    autostart: {description: Whether it starts with libvirt., type: bool}
    type: {description: Pool type., type: str}
    path: {description: Target path., type: str}
    capacity: {description: Bytes (0 while inactive)., type: int}
    allocation: {description: Bytes used., type: int}
    available: {description: Bytes free., type: int}
    source: {description: "Source hosts, devices, dir, name and format.", type: dict}
    volumes: {description: Names of its volumes (running pools)., type: list, elements: str}
    xml: {description: The persistent definition., type: str}
  sample:
    - {name: lab-images, uuid: 0329e4e2-e75d-4910-856e-5618882f939f, state: running, active: true,
       persistent: true, autostart: true, type: dir, path: /var/lib/lockstep-lab/shared/pools/lab-images,
       capacity: 270553174016, allocation: 23678308352, available: 246874865664,
       source: {hosts: [], devices: [], dir: null, name: null, format: null}, volumes: [web1.qcow2]}
libvirt_error:
  description: libvirt's C(code), C(domain) and C(message), when a libvirt call failed.
  returned: failure
  type: dict
"""


from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.pool import list_pools
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(
        {"name": {"type": "str"}},
        work=lambda conn, module: {"changed": False, "pools": list_pools(conn, module.params["name"])},
        readonly=True,
    )


if __name__ == "__main__":
    main()
