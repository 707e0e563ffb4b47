#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: apply
short_description: Converge a whole libvirt host - networks, storage pools, volumes and guests - in one task
version_added: 0.2.0
description:
  - Brings every network, storage pool, volume and domain listed to its state in one task, over one
    connection. Each item takes exactly the options of the single-object module
    (M(lockstep.virt.network), M(lockstep.virt.pool), M(lockstep.virt.volume), M(lockstep.virt.domain)),
    less O(uri), is validated by that module's own argument spec and is converged by the same code, so it
    behaves (and reports its actions) as that module would.
  - The host is read once per kind (every domain, network and storage pool listed at once, the volumes of
    each pool once, each object's XML read at most once) and compared in memory, so a run that changes
    nothing costs little more than one task, however many guests the host has. A loop of
    M(lockstep.virt.domain) tasks pays Ansible's per-task cost once per guest.
  - Order. What is to be present is applied in dependency order - networks, pools, volumes, domains;
    then what is to go (items whose C(state) removes them, and with O(prune) the unlisted marked objects) in
    the reverse order - domains, volumes, pools, networks.
  - Failures. One object that fails does not hide the others. What depends on it is skipped with the
    reason (a volume in a failed pool; a domain whose network, pool or volume failed), everything else is
    applied, and the task then fails naming each object that did not reach its state; RV(results) and
    RV(summary) are returned either way.
  - Bad input in any item (an unknown option, a bad spec or XML, the same object listed twice) fails the
    task before anything is looked up or changed.
  - Guests are started as M(lockstep.virt.domain) starts them, with the lease-checked start and
    RV(results[].lock_checkpoints); O(lock) sets the lock options of every domain item that gives none.
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
attributes:
  check_mode:
    support: full
    details:
      - Predicts every object's actions. An object check mode would create counts as there for what is
        checked after it (a volume in a pool to be defined, a domain on a network to be defined).
  diff_mode:
    support: full
    details:
      - Each changed object's diff (state, autostart, the part of its definition you manage), as its
        single-object module shows it; also in RV(results[].diff).
  idempotent:
    support: full
options:
  networks:
    description:
      - Networks, each with the options of M(lockstep.virt.network) (less O(uri)).
      - Not given - networks are not looked at, nor pruned. Given, even empty, with O(prune=true) - every
        network carrying the collection's managed mark that is not listed is stopped and undefined.
    type: list
    elements: dict
  pools:
    description:
      - Storage pools, each with the options of M(lockstep.virt.pool) (less O(uri)).
      - Pools are never pruned - libvirt keeps no metadata for a pool, so none carries the mark.
    type: list
    elements: dict
  volumes:
    description:
      - Volumes, each with the options of M(lockstep.virt.volume) (less O(uri)); the pool is named by the
        item's C(pool).
      - Volumes are never pruned (they carry no mark).
    type: list
    elements: dict
  domains:
    description:
      - Domains (guests), each with the options of M(lockstep.virt.domain) (less O(uri)).
      - An item without C(lock) takes O(lock).
      - An item with C(wait_for) (see M(lockstep.virt.domain)) is waited for before the next one; its result holds
        its C(addresses).
      - Not given - domains are not looked at, nor pruned. Given, even empty, with O(prune=true) - every
        domain carrying the collection's managed mark that is not listed is destroyed and undefined (its
        storage is kept).
    type: list
    elements: dict
  prune:
    description:
      - Remove the objects of each kind given (O(networks), O(domains)) that carry the collection's managed
        mark (every object defined from a C(spec), or from C(xml), by this collection) and are not listed.
      - An object without the mark is never touched. An object defined by other means (taken under management
        with M(lockstep.virt.export), for example) stays unmarked while its definition matches its item, and
        is marked the first time its item redefines it.
      - Every marked object of those kinds counts, whoever defined it (another play, another team, the
        collection's demo); O(prune_pattern) limits the prune to the names that are yours.
    type: bool
    default: false
  prune_pattern:
    description:
      - With O(prune=true), only the unlisted marked objects whose name matches this shell-style pattern
        (C(fnmatch), case-sensitive - for example C(web-*)) are removed; the others are left untouched.
      - Not given - every unlisted marked object of a kind given is pruned.
      - Has no effect without O(prune=true).
    type: str
    version_added: 0.2.0
  lock:
    description:
      - The lock options of every domain item that gives none, as the O(lockstep.virt.domain#module:lock)
        option of M(lockstep.virt.domain).
    type: dict
    default: {}
    suboptions:
      acquire:
        description: When a started guest takes its leases; see M(lockstep.virt.domain).
        type: str
        choices: [after_create, libvirt]
        default: after_create
      required:
        description: Refuse to start a guest whose leases cannot be held and verified.
        type: bool
        default: false
      acquire_timeout:
        description: Seconds to retry a start whose lease is busy elsewhere.
        type: int
        default: 0
      verify:
        description: Verify after a start that the guest's leases are held by this host.
        type: bool
        default: true
seealso:
  - module: lockstep.virt.domain
  - module: lockstep.virt.network
  - module: lockstep.virt.pool
  - module: lockstep.virt.volume
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: A host's network, pool, disks and guests in one task
  lockstep.virt.apply:
    networks:
      - name: lab-net
        state: active
        autostart: true
        spec:
          forward: nat
          ipv4: {address: 10.78.0.1, prefix: 24, dhcp_range: {start: 10.78.0.100, end: 10.78.0.200}}
    pools:
      - name: guests
        state: active
        spec: {type: dir, path: /var/lib/libvirt/images/guests}
    volumes:
      - {pool: guests, name: web1.qcow2, capacity: 8G, format: qcow2}
    domains:
      - name: web1
        state: running
        spec:
          memory: 1024
          vcpus: 1
          disks: [{pool: guests, volume: web1.qcow2}]
          interfaces: [{network: lab-net}]
    lock:
      required: true

- name: Two hundred guests from a list; guests this collection defined that are not listed are removed
  lockstep.virt.apply:
    domains: "{{ guests }}"
    prune: true
  register: host

- name: What changed
  ansible.builtin.debug:
    msg: "{{ host.summary }}"

- name: This team's guests from a list; only its own unlisted ones (web-*) are pruned, other marked guests stay
  lockstep.virt.apply:
    domains: "{{ web_guests }}"
    prune: true
    prune_pattern: web-*
"""

RETURN = r"""
results:
  description:
    - One entry per object, in the order applied - with what its single-object module returns (less the
      object's summary and, for a domain, its leases) and the keys below.
  returned: always
  type: list
  elements: dict
  contains:
    kind: {description: "network, pool, volume or domain.", type: str, returned: always}
    name: {description: Name of the object., type: str, returned: always}
    pool: {description: The pool of a volume., type: str, returned: for volumes}
    changed: {description: "Whether the object changed (would, in check mode).", type: bool, returned: always}
    actions: {description: "What was done to it (would be, in check mode), in order.", type: list, elements: str,
              returned: always}
    outcome: {description: "created, changed, unchanged, removed, failed or skipped.", type: str, returned: always}
    failed: {description: Whether it did not reach its state (failed or skipped)., type: bool, returned: always}
    msg: {description: Why it failed or was skipped., type: str, returned: when failed}
    pruned: {description: Removed by O(prune)., type: bool, returned: when pruned}
    diff: {description: "Its diff (before, after)", type: dict, returned: in diff mode}
    lock_checkpoints: {description: "For a domain, what happened to its leases (as M(lockstep.virt.domain)
                       returns them).", type: list, elements: dict, returned: for domains}
  sample:
    - {kind: domain, name: web1, changed: true, actions: [define, start], outcome: created, failed: false,
       pending_restart: false, lock_checkpoints: [{name: defined, ok: true}, {name: leases_verified, ok: true}]}
summary:
  description: How many objects were created, changed, left unchanged, removed, failed and skipped.
  returned: always
  type: dict
  contains:
    created: {description: Objects created (would be)., type: int, returned: always}
    changed: {description: Existing objects changed., type: int, returned: always}
    unchanged: {description: Objects already in their state., type: int, returned: always}
    removed: {description: "Objects removed (listed as absent, or pruned).", type: int, returned: always}
    failed: {description: Objects that failed., type: int, returned: always}
    skipped: {description: Objects not tried because what they need failed., type: int, returned: always}
  sample: {created: 0, changed: 1, unchanged: 199, removed: 0, failed: 0, skipped: 0}
"""

from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.apply import (
    APPLY_ARGUMENT_SPEC,
    ApplyManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(APPLY_ARGUMENT_SPEC, manager=ApplyManager)


if __name__ == "__main__":
    main()
