#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: secret_info
short_description: Facts about libvirt secrets, never their values
version_added: 0.2.0
description:
  - Lists a host's libvirt secrets - UUID, usage, description, private and ephemeral - without their values.
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.info_module
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
options:
  uuid:
    description: Only the secret with this UUID (an empty list when there is none).
    type: str
  usage:
    description: Only secrets of this usage type.
    type: str
    choices: [ceph, iscsi, tls, volume, vtpm]
  usage_id:
    description: With O(usage), only the secret of this usage name.
    type: str
seealso:
  - module: lockstep.virt.secret
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: Every secret of the host
  lockstep.virt.secret_info:
  register: secrets

- name: UUIDs of the Ceph secrets
  ansible.builtin.debug:
    msg: "{{ secrets.secrets | selectattr('usage', 'equalto', 'ceph') | map(attribute='uuid') | list }}"
"""

RETURN = r"""
secrets:
  description: The secrets, by usage and usage name.
  returned: always
  type: list
  elements: dict
  contains:
    uuid: {description: UUID., type: str}
    usage: {description: Usage type (null for a secret without usage)., type: str}
    usage_id: {description: Usage name or volume path., type: str}
    description: {description: Description., type: str}
    private: {description: Whether libvirt keeps the value to itself., type: bool}
    ephemeral: {description: Whether it lives in memory only., type: bool}
  sample:
    - {uuid: 6b0f3c1e-8f3a-4c39-9d2e-3b7c1a0e5f11, usage: ceph, usage_id: client.libvirt secret,
       description: Ceph client.libvirt, private: true, ephemeral: false}
libvirt_error:
  description: libvirt's error code, domain and message, when a libvirt call failed.
  returned: failure
  type: dict
"""


from ansible_collections.lockstep.virt.plugins.module_utils._virt.reporters.secret_info import (
    SECRET_INFO_ARGUMENT_SPEC,
    list_secrets,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(
        SECRET_INFO_ARGUMENT_SPEC,
        work=lambda conn, module: {
            "changed": False,
            "secrets": list_secrets(conn, module.params["uuid"], module.params["usage"], module.params["usage_id"]),
        },
        readonly=True,
    )


if __name__ == "__main__":
    main()
