#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: migrate_many
short_description: Live-migrate several guests off a hypervisor at once, each with a verified lease handoff
version_added: 0.2.0
description:
  - Runs on the source hypervisor and moves its running (and paused) guests - those named in O(names), matching
    O(pattern) - to O(destinations), at most O(concurrency) at a time. This is what the C(lockstep.virt.evacuate)
    role runs.
  - Every move is a full M(lockstep.virt.migrate) run - the same engine, options and result, each in a process
    of its own - so the lease rules are the same as one migration at a time - the destination takes the
    leases only once the guest has arrived, the source gives them up only after the send, and a failed move
    leaves the guest running where it was, with its leases.
  - "Placement: largest guest first, each guest goes to the destination with the most free memory (free,
    buffers and page cache as libvirt reports them) that can take it; the destination's free memory is
    lowered by the guest's size as it is placed. A guest named in O(placement) goes where it says. When a
    destination's preflight - M(lockstep.virt.migrate)'s own checks (its networks, storage pools and volumes
    there, the guest's leases held here) - refuses a guest before anything was done, that destination is
    struck for the guest and the guest is placed again."
  - On the first failure no further move is started (those in flight finish) unless O(continue_on_error).
    A plan that cannot place every guest moves none of them.
  - At the end every guest is looked up on the source and on every destination - RV(guests[].runs_on) - and the
    module fails when a guest was not moved, is active on two hosts, or runs nowhere.
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
attributes:
  check_mode:
    support: full
    details:
      - A dry run - the plan, and for each guest M(lockstep.virt.migrate)'s check mode against its destination
        (the preflight), at the same concurrency; nothing moves.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Guests are only taken from the source; once none runs there, nothing is moved.
options:
  uri:
    description:
      - libvirt URI of the source hypervisor, as seen from the managed host. Leases are only verified when this is
        the managed host's own daemon (the default).
  names:
    description: Only these guests. All running guests matching O(pattern) when not given.
    type: list
    elements: str
  pattern:
    description: Only guests whose name matches this shell-style pattern.
    type: str
    default: "*"
  destinations:
    description:
      - Host names of the destination hypervisors, as the source resolves them. Destinations named in O(placement)
        are added.
    type: list
    elements: str
    default: []
  dest_uri:
    description: libvirt URI of a destination as the source reaches it, C({host}) standing for its name.
    type: str
    default: qemu+ssh://{host}/system
  placement:
    description:
      - Fixed destinations - a mapping of guest name to destination host name. Guests not named are placed by free
        memory.
    type: dict
    default: {}
  concurrency:
    description: At most this many migrations in flight from the host.
    type: int
    default: 2
  concurrency_per_destination:
    description: At most this many migrations in flight to one destination (V(0) - only O(concurrency) limits).
    type: int
    default: 0
  continue_on_error:
    description: Go on starting moves after one failed. By default none is started after the first failure.
    type: bool
    default: false
  reserve_memory_mib:
    description: Memory in MiB that placement keeps free on every destination.
    type: int
    default: 0
  migrate:
    description:
      - Options of M(lockstep.virt.migrate) for every move, for example C(unsafe), C(lock), C(timeout),
        C(bandwidth), C(convergence) - all but C(name), C(dest_uri) and C(uri), which are set per guest.
        They are checked before anything moves.
    type: dict
    default: {}
notes:
  - Each move opens its own connections to the source and its destination, as M(lockstep.virt.migrate) does.
seealso:
  - module: lockstep.virt.migrate
  - module: lockstep.virt.lease_info
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
# Run on the source hypervisor (here hv1; lab - the shared directory is local, so libvirt needs unsafe).
# List more destinations to spread the guests over them by free memory.
- name: Move every guest off hv1 to hv2, two at a time
  lockstep.virt.migrate_many:
    destinations: [hv2]
    concurrency: 2
    migrate:
      unsafe: true
      lock:
        acquire_timeout: 20
  register: moved

- name: Where each guest went and how long it took
  ansible.builtin.debug:
    msg: "{{ moved.guests | map(attribute='name') | zip(moved.guests | map(attribute='runs_on'),
             moved.guests | map(attribute='elapsed_s', default=None)) | list }}"

- name: The plan only - which guest would go where, each checked by the migrate preflight
  lockstep.virt.migrate_many:
    destinations: [hv2]
    placement:
      web1: hv2
    migrate:
      unsafe: true
  check_mode: true
"""

RETURN = r"""
changed:
  description: Whether a guest was moved (in check mode - would be).
  returned: always
  type: bool
source:
  description: Host name of the source hypervisor.
  returned: always
  type: str
  sample: hv1
plan:
  description: The placement, in the order the moves are started.
  returned: always
  type: list
  elements: dict
  contains:
    order:
      description: Position in the plan, from 1.
      type: int
    name:
      description: The guest.
      type: str
    memory_mib:
      description: Its memory (the maximum) in MiB.
      type: int
    dest:
      description: The destination chosen (null when none can take it).
      type: str
    reason:
      description: Why - C(placement), C(most free memory (N MiB)), or why none fits.
      type: str
    summary:
      description: The entry as one line.
      type: str
  sample:
    - order: 1
      name: web1
      memory_mib: 32
      dest: hv2
      reason: most free memory (7710 MiB)
      summary: 1. web1 (32 MiB) -> hv2 - most free memory (7710 MiB)
guests:
  description: The report, one entry per guest in plan order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The guest.
      type: str
    memory_mib:
      description: Its memory in MiB.
      type: int
    dest:
      description: Its destination (the last one tried).
      type: str
    order:
      description: Its position in the plan.
      type: int
    state:
      description:
        - C(moved), C(already_there), C(would_move) (check mode), C(failed) or C(not_started) (stopped after
          another guest's failure).
      type: str
    runs_on:
      description: Hosts (the source or a destination) where the guest runs at the end - exactly one when all is well.
      type: list
      elements: str
    where:
      description: Every host with an active copy at the end and its state (C(running), C(paused)).
      type: dict
    started_s:
      description: When its move started, seconds after the module started.
      type: float
    started_at:
      description: When its move started, UTC, ISO 8601 with milliseconds.
      type: str
    elapsed_s:
      description: How long its move took (the migrate run), in seconds.
      type: float
    downtime_ms:
      description: Its pause - RV(lockstep.virt.migrate#module:downtime_ms) of its migration.
      type: int
    lease_gap_ms:
      description: RV(lockstep.virt.migrate#module:lease_gap_ms) of its migration.
      type: int
    phase:
      description: When it failed - C(placement), C(connect), C(preflight), or the migration's phase (C(begin),
        C(prepare), C(perform), C(finish), C(confirm)) of its first failed checkpoint.
      type: str
    failed_at:
      description: When it failed during the migration, the name of the failed checkpoint.
      type: str
    msg:
      description: When it failed, the migration's message.
      type: str
    attempts:
      description: Each destination tried - C(dest), C(ok), C(elapsed_s), and C(phase), C(msg) when it refused.
      type: list
      elements: dict
    result:
      description: The full result of its M(lockstep.virt.migrate) run (checkpoints, leases, timing, checks).
      type: dict
    summary:
      description: The entry as one line - where it went, how long it took, its pause, or where it failed.
      type: str
destinations:
  description: Each destination - C(name), C(uri), C(free_mib) (when the plan was made), C(reachable), C(guests) placed.
  returned: always
  type: list
  elements: dict
elapsed_s:
  description: Seconds the whole run took.
  returned: always
  type: float
stopped:
  description: Whether moves were left unstarted because of a failure.
  returned: always
  type: bool
"""

from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.evacuation import (
    MIGRATE_MANY_ARGUMENT_SPEC,
    Evacuation,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(
        MIGRATE_MANY_ARGUMENT_SPEC,
        work=lambda conn, module: Evacuation(module.params, module.check_mode).run(),
        connect=False,
    )


if __name__ == "__main__":
    main()
