#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: secret
short_description: Define libvirt secrets and set their values
version_added: 0.2.0
description:
  - Manages one libvirt secret (the passphrase of an encrypted volume, the key of a Ceph user, an iSCSI
    CHAP password, a TLS key passphrase, a vTPM state key), named by its usage (O(usage) and O(usage_id))
    or its O(uuid).
  - The value is compared with libvirt's value on the host and set only when it differs. It is never
    returned, put in the diff or written to a message.
  - A secret that is not private is compared through libvirt. libvirt never gives out the value of a
    V(private) secret; on the host itself (the default local URI, as root) the module compares it with the
    value libvirt stored for a persistent secret. A private ephemeral secret, or a private one over a
    remote URI, cannot be compared - O(update_value) decides what happens then.
  - Pool specs refer to a secret by usage or UUID for rbd and iSCSI authentication
    (O(lockstep.virt.pool#module:spec.source.auth)).
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
attributes:
  check_mode:
    support: full
    details: Predicts define, redefine, set_value and undefine without doing them.
  diff_mode:
    support: full
    details: The diff shows the secret's XML (never its value), before and after.
  idempotent:
    support: full
    details: >-
      With O(update_value=always), or O(update_value=on_create) when the value cannot be compared, a value
      is set on every run or never after creation, respectively.
options:
  uuid:
    description:
      - UUID of the secret. libvirt generates one for a new secret when not given.
      - With O(usage), both must name the same secret.
    type: str
  usage:
    description: What the secret is for. Needed to define a secret.
    type: str
    choices: [ceph, iscsi, tls, volume, vtpm]
  usage_id:
    description:
      - The usage's name - the Ceph user (V(client.libvirt secret)), the iSCSI target, the TLS or vTPM name,
        or the path of the encrypted volume for V(volume). libvirt allows one secret per usage and name.
    type: str
  state:
    description: V(present) defines it (and sets the value when O(value) is given); V(absent) undefines it.
    type: str
    choices: [present, absent]
    default: present
  description:
    description: Free text. Left alone when not given.
    type: str
  private:
    description: libvirt never gives the value out (V(virsh secret-get-value) refuses).
    type: bool
    default: true
  ephemeral:
    description: libvirt keeps the secret in memory only; it is gone when libvirtd restarts.
    type: bool
    default: false
  value:
    description:
      - The secret's value. Left alone when not given. Never logged nor returned.
      - A Ceph key as C(ceph auth get-key) prints it is base64 - use O(value_encoding=base64).
    type: str
  value_encoding:
    description: V(raw) - O(value) is the value itself (UTF-8); V(base64) - O(value) is its base64 encoding.
    type: str
    choices: [raw, base64]
    default: raw
  update_value:
    description:
      - V(when_different) - compare with libvirt's value and set it when it differs; fail when it cannot be
        compared (a private ephemeral secret, or a private secret over a remote URI).
      - V(on_create) - set it when the secret is created; afterwards only when it can be compared and differs.
      - V(always) - set it on every run (reported as a change).
    type: str
    choices: [when_different, on_create, always]
    default: when_different
seealso:
  - module: lockstep.virt.secret_info
  - module: lockstep.virt.pool
  - name: libvirt secret XML format
    description: The secret's XML.
    link: https://libvirt.org/formatsecret.html
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: The key of the Ceph user libvirt uses for rbd pools
  lockstep.virt.secret:
    usage: ceph
    usage_id: client.libvirt secret
    description: Ceph client.libvirt
    value: AQBz5tFnAAAAABAAl4cWi4bGCDg3e2dVZaBhNQ==
    value_encoding: base64

- name: The passphrase of a LUKS volume
  lockstep.virt.secret:
    usage: volume
    usage_id: /var/lib/libvirt/images/vault.luks
    value: correct horse battery staple

- name: Remove it
  lockstep.virt.secret:
    usage: volume
    usage_id: /var/lib/libvirt/images/vault.luks
    state: absent
"""

RETURN = r"""
secret:
  description: The secret after the task (predicted in check mode), without its value; null when absent.
  returned: always
  type: dict
  contains:
    uuid: {description: UUID (null for a secret check mode would define)., type: str}
    usage: {description: Usage type., type: str}
    usage_id: {description: Usage name or volume path., type: str}
    description: {description: Description., type: str}
    private: {description: Whether libvirt keeps the value to itself., type: bool}
    ephemeral: {description: Whether it lives in memory only., type: bool}
  sample: {uuid: 6b0f3c1e-8f3a-4c39-9d2e-3b7c1a0e5f11, usage: ceph, usage_id: client.libvirt secret,
           description: Ceph client.libvirt, private: true, ephemeral: false}
actions:
  description: What was done (or would be, in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [define, set_value]
value_changed:
  description: Whether the value was set (or would be, in check mode).
  returned: always
  type: bool
value_compared:
  description: >-
    Whether the value was compared with libvirt's (true), could not be (false: a new secret, O(update_value=always),
    or a value libvirt does not give out), or O(value) was not given (null).
  returned: always
  type: bool
differences:
  description: Where the definition differed.
  returned: when the definition changed
  type: list
  elements: str
  sample: [/secret/description]
libvirt_error:
  description: libvirt's error code, domain and message, when a libvirt call failed.
  returned: failure
  type: dict
"""


from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.secret import (
    SECRET_ARGUMENT_SPEC,
    SecretManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(SECRET_ARGUMENT_SPEC, manager=SecretManager)


if __name__ == "__main__":
    main()
