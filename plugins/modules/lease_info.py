#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: lease_info
short_description: Which lock-manager leases a hypervisor's guests hold, and the host's lock configuration
version_added: 0.1.0
description:
  - For all guests of the hypervisor, or the named ones, reports every read-write disk's lease resource and every
    VM lease (C(<lease>)), its lockspace directory, whether it is held, and whether this host's virtlockd holds it
    (POSIX F_GETLK on the lease file, which also gives the holder's pid).
  - With sanlock (C(lock_manager = "sanlock")), the leases are named as libvirt's sanlock plugin names them (a
    disk's lease is the md5 of its path in lockspace C(__LIBVIRT__DISKS__) under C(disk_lease_dir); a
    C(<lease>) is its key at its target path) and the holder is named by host - from this host's sanlock daemon
    (C(sanlock client status)) and from the lease's leader record on shared storage (C(sanlock direct dump)),
    whose host_id is named through the lockspace's host records. A lease neither can read is reported with
    C(held) null (unknown), never as not held.
  - Reports the host's lock manager configuration - plugin, C(auto_disk_leases), C(require_lease_for_disks),
    lockspace directories - and RV(unleased_running), the running guests exposed to a split brain.
  - Run across all hypervisors, it shows which host holds what.
  - "A shareable disk (C(<shareable/>)) is locked shared: C(lock) is C(shared), C(sharers) names the other guests on
    this host that share it (this host's virtlockd keeps one lock for all of them), and C(held_here) is read from
    virtlockd's own open files when F_GETLK names another host's shared lock. A running guest whose host holds no
    shared lock on such a disk is in RV(unleased_running)."
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.info_module
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
options:
  names:
    description: Only these guests (names not found are listed in RV(missing)). All guests when not given.
    type: list
    elements: str
    aliases: [name]
seealso:
  - module: lockstep.virt.migrate
  - module: lockstep.virt.domain_info
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: Leases of all guests on this hypervisor
  lockstep.virt.lease_info:
  register: leases

- name: Fail on a split-brain risk
  ansible.builtin.assert:
    that: leases.unleased_running | length == 0
    fail_msg: "{{ leases.unleased_running }}"

# Across all hypervisors at once: ansible hypervisors -m lockstep.virt.lease_info

- name: One guest only
  lockstep.virt.lease_info:
    names: [web1]
"""

RETURN = r"""
host:
  description: Host name of the hypervisor.
  returned: always
  type: str
  sample: hv1
lock_manager:
  description: The host's lock manager configuration for the connection's driver.
  returned: always
  type: dict
  contains:
    manager:
      description: C(lockd), C(sanlock) or null (none).
      type: str
    enabled:
      description: Whether a lock manager takes leases.
      type: bool
    auto_disk_leases:
      description: Whether disks are leased automatically.
      type: bool
    require_lease_for_disks:
      description: Whether a guest must have a lease for its disks.
      type: bool
    file_lockspace_dir:
      description: Directory of indirect disk leases.
      type: str
    disk_lease_dir:
      version_added: 0.2.0
      description: sanlock's directory of automatic disk leases (C(qemu-sanlock.conf)); null for lockd.
      type: str
    host_id:
      version_added: 0.2.0
      description: This host's sanlock host_id (C(qemu-sanlock.conf)); null for lockd.
      type: int
    lockspace_dirs:
      description: Every lockspace directory configured or used by a guest.
      type: list
      elements: str
    probeable:
      description: Whether leases can be probed from here (lockd or sanlock, local connection).
      type: bool
    virtlockd_pids:
      description: Pids of this host's virtlockd (lockd).
      type: list
      elements: int
    sanlock:
      version_added: 0.2.0
      description:
        - This host's sanlock daemon (sanlock only, else null) - C(daemon) (its name, C(<uuid>.<host name>)),
          C(answers), C(host_id), C(errors), and C(lockspaces), each with C(name), C(host_id) (this host's),
          C(path), C(offset) and C(hosts) (C(host_id) and C(host) of every host in its delta lease records).
      type: dict
  sample:
    manager: lockd
    auto_disk_leases: true
    require_lease_for_disks: false
    file_lockspace_dir: /var/lib/lockstep-lab/shared/lockd
guests:
  description: Each guest with its leases.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Guest name.
      type: str
    state:
      description: libvirt state.
      type: str
    leases:
      description:
        - Leases of the guest (disk leases and VM leases) and who holds them, each with the fields of
          RV(lockstep.virt.domain#module:leases) (C(lockspace) is the lockspace directory).
      type: list
      elements: dict
    handoff:
      version_added: 0.2.0
      description:
        - The migrate module's handoff marker with a C(note), as in
          RV(lockstep.virt.domain_info#module:domains[].handoff) - a paused guest carrying it was left by a
          migration whose handoff did not finish. Null without one.
      type: dict
unleased_running:
  description:
    - Running guests with a read-write disk no lease covers or a lease this host's lock manager (virtlockd, or
      sanlock) does not hold, with the C(reasons).
  returned: always
  type: list
  elements: dict
  sample: [{name: web1, reasons: ["lease web1-lease not held by this host's virtlockd (not held)"]}]
missing:
  description: Requested names with no guest on this host.
  returned: always
  type: list
  elements: str
libvirt_error:
  version_added: 0.2.0
  description: libvirt's C(code), C(domain) and C(message), when a libvirt call failed.
  returned: failure
  type: dict
"""


from ansible_collections.lockstep.virt.plugins.module_utils._virt.reporters.lease_info import (
    LEASE_INFO_ARGUMENT_SPEC,
    LeaseInfoReporter,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(LEASE_INFO_ARGUMENT_SPEC, work=lambda conn, module: LeaseInfoReporter(conn, module.params).run())


if __name__ == "__main__":
    main()
