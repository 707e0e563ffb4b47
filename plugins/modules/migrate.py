#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: migrate
short_description: Live-migrate a libvirt guest with a verified lock-manager lease handoff
version_added: 0.1.0
description:
  - Runs on the source hypervisor and migrates the running guest O(name) to O(dest_uri), with the lease
    handoff explicit, verified and recorded in RV(lock_checkpoints). The whole story, path by path, is in
    the collection's guide C(docs/guides/lease-safe-migration.md).
  - "What libvirt does (QEMU driver): the source's vCPUs stop for the final part of the copy and libvirt
    releases the source's leases right then, before the send has completed. With the default
    O(lock.release=after_send) the guest is sent with the destination kept paused (C(VIR_MIGRATE_PAUSED)),
    holding no lease. libxl (after libvirt's lock-ordering fix) releases on the source after a successful
    send and takes the leases on the destination before it unpauses."
  - "What the module adds: it watches both hosts' lifecycle events; once the destination holds the whole
    guest (paused) and the lease probe shows that the source's virtlockd holds none of its leases, it resumes
    the destination - whose lock manager takes them - while libvirt confirms the source, retrying a
    C(resource busy) refusal until O(lock.acquire_timeout). It then checks that the leases are held, and not
    by the source's virtlockd, and that libvirt stopped the source. Without events it resumes after the
    migration call returned. It never resumes the destination while the probe sees a lease held by the
    source."
  - "Send failure: the destination's half-received copy is gone and holds no lease, and the guest runs on
    the source holding its leases (verified). When the send is cancelled after QEMU stopped the vCPUs,
    QEMU resumes them itself and libvirt takes no lease back; the module pauses and resumes the guest through
    libvirt so that it holds them again, or leaves it paused when they are busy."
  - "Every failure after the send returns the whole result - RV(changed), RV(state), every checkpoint so
    far - and its message says where the guest is, from the states read after the failure."
  - "Re-runnable (reconcile): before it moves anything the module reads both hosts and acts only on evidence
    that a copy is the newest, never on the absence of a lease. A guest left paused on the destination by an
    interrupted run (its process killed, the controller interrupted, the SSH session dropped, a lease busy
    past O(lock.acquire_timeout)) carries the module's handoff marker and is resumed there when the source
    shut it off with reason C(migrated) (its state, or the last line libvirt wrote in the guest's QEMU log on
    the source since the handoff began); an unconfirmed paused copy on the source next to a guest running
    leased on the destination is destroyed; a source left paused is resumed and migrated only when the
    destination never finished receiving (no definition there although the send made it persistent). Any
    other paused copy, and a failed post-copy, is refused with what was seen and nothing changed. These runs
    report C(changed=true) with C(reconcile/...) checkpoints. Another run still at work on the guest, or a
    migration job on either host, makes the task fail without changing anything."
  - "Preflight, before anything moves (and in check mode): the destination has the guest's networks,
    storage pools and volumes, its name is free there, the source holds every lease, and the guest has no
    snapshot - libvirt's QEMU driver refuses to migrate a guest with snapshot metadata, internal (kept in the
    images, per host) or external; the check names each one (see M(lockstep.virt.snapshot_info))."
  - "With O(lock.verify=true) preflight also reads the destination's lock configuration - the same files the
    source's are read from (the driver profile's C(qemu.conf) and C(qemu-lockd.conf)), over SSH with the user,
    port and C(keyfile)/C(known_hosts)/C(no_verify) of a C(+ssh) O(dest_uri) - and refuses, changing nothing, a
    destination with no lock manager (the guest would run there unleased), another lock manager, or one that
    would lease the guest elsewhere (another C(file_lockspace_dir), automatic disk leases off, a VM lease's
    lockspace it does not know). A destination whose configuration cannot be read (a C(+tls) or C(+tcp) URI) is
    refused too, with O(lock.verify=false) as the way past."
  - "Shareable disks (C(<shareable/>)) are locked shared by virtlockd: one lock per host that stays while any
    guest there sharing the disk runs. A shared lock is not an exclusive holder. When another guest on the
    source shares the disk, the lock cannot show whether the migrating guest's own share is still held; the
    evidence is then libvirt's release of every lease of its QEMU process when its vCPUs stop (the source's
    SUSPENDED event, or its state read). The checkpoints' C(check) says which evidence was used."
  - Idempotent - a guest already running on the destination and not on the source is C(changed=false).
  - "The lease names come from the source host's lock manager configuration and are probed there with
    F_GETLK: the lockspace is shared, so source and destination must use the same configuration. From the
    source host the probe sees that a lease is held and whether the source's virtlockd holds it, not which
    other process does."
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
attributes:
  check_mode:
    support: full
    details:
      - Reports the plan (flags, parameters, checkpoints, and with O(convergence) the downtime steps and timeouts
        computed for this guest's size) and every check that would fail, touching nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - A guest already running on the destination and absent from the source is not migrated again.
      - A run interrupted at any point converges when run again (reconcile).
options:
  uri:
    description:
      - libvirt URI of the source hypervisor (where the guest runs now), as seen from the managed host.
      - Leases are only verified when this is the managed host's own daemon (the default).
  name:
    description: Name of the guest.
    type: str
    required: true
  dest_uri:
    description:
      - libvirt URI of the destination as seen from the source host, for example C(qemu+ssh://hv2/system).
      - With O(mode=peer2peer) or O(mode=tunnelled) the source libvirtd connects to it too.
    type: str
    required: true
  live:
    description: Live migration (the guest keeps running during the transfer). V(false) pauses it for the transfer.
    type: bool
    default: true
  mode:
    description:
      - V(peer2peer) - the source libvirtd drives the migration protocol (C(VIR_MIGRATE_PEER2PEER)).
      - V(tunnelled) - peer-to-peer with the data tunnelled through the libvirtd connection (C(VIR_MIGRATE_TUNNELLED)).
      - V(direct) - the module drives the protocol itself, connected to both daemons (managed direct migration).
    type: str
    choices: [peer2peer, direct, tunnelled]
    default: peer2peer
  persistent:
    description: Define the guest persistently on the destination (C(VIR_MIGRATE_PERSIST_DEST)).
    type: bool
    default: true
  undefine_source:
    description: Remove the guest's definition from the source after success (C(VIR_MIGRATE_UNDEFINE_SOURCE)).
    type: bool
    default: true
  copy_storage:
    description: Copy non-shared disks - V(all) (full copy) or V(incremental) (images exist on the destination).
    type: str
    choices: [none, all, incremental]
    default: none
  bandwidth:
    description: Maximum bandwidth in MiB/s.
    type: int
  max_downtime:
    description: Maximum tolerated downtime in milliseconds (set on the source before the transfer).
    type: int
  auto_converge:
    description: Throttle the guest's vCPUs so that a busy guest converges (C(VIR_MIGRATE_AUTO_CONVERGE)).
    type: bool
    default: false
  postcopy:
    description:
      - Switch to post-copy after this many seconds without convergence (C(VIR_MIGRATE_POSTCOPY)). The seconds
        count from the migration call; QEMU refuses the switch until libvirt has set the migration up on both
        hosts, so the module asks again until it is taken, or the job ended.
      - Post-copy runs the guest on the destination as soon as it switches, so the destination cannot be
        kept paused - the lease handoff is then libvirt's own and the module verifies it afterwards.
      - Needs O(live=true).
    type: int
  postcopy_bandwidth:
    description:
      - Maximum bandwidth in MiB/s of the post-copy phase (libvirt's C(bandwidth.postcopy) parameter, QEMU's
        C(max-postcopy-bandwidth)); without it the post-copy phase is not limited. O(bandwidth) limits only
        the phase before the switch.
      - The guest runs on the destination during the post-copy phase and waits for every page it touches
        that has not arrived yet, so a low limit makes that phase, and with it the time in which a failure
        cannot be undone, longer.
      - Only valid with O(postcopy) or O(convergence.timeout_action=postcopy); refused otherwise. Greater than 0.
    type: int
    version_added: 0.3.0
  compressed:
    description: Compress the migration data (C(VIR_MIGRATE_COMPRESSED)).
    type: bool
    default: false
  parallel_connections:
    description: Use this many parallel connections (C(VIR_MIGRATE_PARALLEL)).
    type: int
  unsafe:
    description:
      - Force a migration libvirt considers unsafe (C(VIR_MIGRATE_UNSAFE)).
      - A lab-only escape - libvirt refuses disks on a local filesystem that only looks shared; never use it
        with real local storage.
    type: bool
    default: false
  timeout:
    description: Abort the migration job after this many seconds; the guest keeps running on the source.
    type: int
  extra_flags:
    description: Further libvirt migration flags (without the C(VIR_MIGRATE_) prefix) no other option sets.
    type: list
    elements: str
    choices: [ABORT_ON_ERROR, CHANGE_PROTECTION, TLS, TUNNELLED, PEER2PEER, NON_SHARED_SYNCHRONOUS_WRITES]
    default: []
  lock:
    description: How the lease handoff is done and verified.
    type: dict
    default: {}
    suboptions:
      release:
        description:
          - V(after_send) - the source gives its leases up only after a successful send, the destination takes
            them when the guest has arrived, before it runs (verified).
          - V(before_send) - the old ordering (source paused and leases released first); for reproducing
            its failure only, with a warning.
        type: str
        choices: [after_send, before_send]
        default: after_send
      verify:
        description:
          - Probe the leases at each step and fail when they are not where they must be.
          - V(false) trusts the lock manager.
        type: bool
        default: true
      acquire_timeout:
        description: Seconds to keep retrying a resume refused with C(resource busy) (a lease held elsewhere).
        type: int
        default: 30
  convergence:
    description:
      - Convergence control for a guest that dirties memory faster than the link copies it (off when
        omitted). The defaults are OpenStack Nova's libvirt driver settings, as a starting point; the
        timings scale with the data to move - the guest's memory, plus its disks with O(copy_storage) -
        in GiB (the real size; Nova counts at least 2 GiB each).
      - While the job runs the module reads libvirt's job statistics every 0.25 s from its one monitoring
        loop, raises the allowed downtime step by step (C(virDomainMigrateSetMaxDowntime)), and takes
        O(convergence.timeout_action) or aborts as below. Results - RV(outcome), RV(progress).
      - Cannot be combined with O(max_downtime), O(postcopy) or O(lock.release=before_send); needs O(live=true).
    type: dict
    suboptions:
      max_downtime:
        description:
          - The highest allowed downtime in milliseconds, reached at the last step (Nova's
            C(live_migration_downtime)). At least 100.
        type: int
        default: 500
      downtime_steps:
        description:
          - Number of raises (Nova's C(live_migration_downtime_steps)), at least 3. The ramp starts at
            O(convergence.max_downtime) / O(convergence.downtime_steps), set before the job starts, and
            grows by equal raises to O(convergence.max_downtime).
        type: int
        default: 10
      downtime_delay:
        description:
          - Seconds between two raises, per GiB to move (Nova's C(live_migration_downtime_delay)).
        type: float
        default: 75
      completion_timeout:
        description:
          - Seconds per GiB to move after which O(convergence.timeout_action) is taken if the job has not
            completed (Nova's C(live_migration_completion_timeout)). V(0) never.
        type: float
        default: 800
      timeout_action:
        description:
          - V(abort) - abort the job (outcome C(aborted_timeout)); the guest keeps running on the source
            with its leases (verified) and the destination has no copy and holds no lease (verified).
          - V(postcopy) - switch to post-copy (outcome C(switched_to_postcopy)). Needs C(VIR_MIGRATE_POSTCOPY)
            from the start, which libvirt refuses with C(VIR_MIGRATE_PAUSED), so the handoff is then libvirt's
            own, verified afterwards - the source stops and releases its leases at the switch, the destination
            takes them as it resumes. A failure after the switch cannot be undone (outcome C(postcopy_failed)).
          - V(pause) - pause the guest on the source so that the copy completes (outcome C(forced_by_pause)); the
            handoff is the usual verified one. A qemu guest releases its leases when paused, so the lease gap
            starts at the pause; should the job still fail, the source resumes the guest and takes them back.
          - Nova's C(live_migration_timeout_action) C(force_complete) is V(postcopy) where permitted, else V(pause).
        type: str
        choices: [abort, postcopy, pause]
        default: abort
      progress_timeout:
        description:
          - Abort after this many seconds without progress (outcome C(aborted_no_progress)). V(0) never (Nova
            removed its C(live_migration_progress_timeout), 150 s).
          - Progress is a window (a third of this timeout, at least 1 s) whose mean data remaining is at least
            25% below the lowest mean so far (during the first pass any lower mean) - not Nova's lowest single
            sample, which the sawtooth of the data remaining (falling during a pass, back up at each dirty-bitmap
            sync) made a matter of chance.
          - Raising the downtime is not progress; set it longer than one downtime step.
        type: float
        default: 0
      auto_converge:
        description: Let QEMU throttle the guest's vCPUs (C(VIR_MIGRATE_AUTO_CONVERGE), Nova's C(permit_auto_converge)).
        type: bool
        default: false
      auto_converge_initial:
        description:
          - Initial throttle in percent (C(auto_converge.initial); QEMU's default is 20).
          - Needs O(convergence.auto_converge).
        type: int
      auto_converge_increment:
        description:
          - Throttle increment in percent (C(auto_converge.increment); QEMU's default is 10).
          - Needs O(convergence.auto_converge).
        type: int
notes:
  - The driver profile decides which flags are legal; the libxl driver accepts only live, peer2peer, tunnelled,
    persistent, undefine_source and the paused handoff, and takes leases when the guest is created (so its
    destination already holds them while paused).
  - C(downtime_ms) and C(lease_gap_ms) come from libvirt lifecycle events received on both connections
    (RV(timing_source=events)); without events they are null.
seealso:
  - module: lockstep.virt.lease_info
  - module: lockstep.virt.domain
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
# Run on the source hypervisor (here hv1; lab - the shared directory is local, so libvirt needs unsafe)
- name: Move web1 from hv1 to hv2 with a verified lease handoff
  lockstep.virt.migrate:
    name: web1
    dest_uri: qemu+ssh://hv2/system
    unsafe: true
    lock:
      acquire_timeout: 20
  register: moved

- name: Show the handoff
  ansible.builtin.debug:
    msg: "{{ moved.lock_checkpoints | map(attribute='name') | list }} gap={{ moved.lease_gap_ms }}ms"

- name: Plan only - which flags, and would the destination have the guest's network and pool?
  lockstep.virt.migrate:
    name: web1
    dest_uri: qemu+ssh://hv2/system
    unsafe: true
  check_mode: true

- name: Busy guest - Nova's convergence defaults, switch to post-copy when the completion timeout is over
  lockstep.virt.migrate:
    name: db1
    dest_uri: qemu+ssh://hv2/system
    bandwidth: 500
    convergence:
      max_downtime: 500
      downtime_steps: 10
      downtime_delay: 75
      completion_timeout: 800
      timeout_action: postcopy
      progress_timeout: 150
      auto_converge: true
      auto_converge_initial: 30
      auto_converge_increment: 10
  register: moved

- name: Busy guest - bandwidth cap, auto-converge, abort after two minutes
  lockstep.virt.migrate:
    name: db1
    dest_uri: qemu+ssh://hv2/system
    bandwidth: 500
    max_downtime: 300
    auto_converge: true
    timeout: 120
"""

RETURN = r"""
changed:
  description: Whether the guest was moved.
  returned: always
  type: bool
name:
  description: The guest.
  returned: always
  type: str
source:
  description: Host name of the source hypervisor.
  returned: always
  type: str
  sample: hv1
dest:
  description: Host name of the destination hypervisor.
  returned: when the destination was reached
  type: str
  sample: hv2
state:
  description: State of the guest on the destination (C(absent) when it has no domain there).
  returned: always
  type: str
  sample: running
lock_checkpoints:
  description:
    - Checkpoints of the handoff, ordered by RV(lock_checkpoints[].at). With QEMU and events a successful run
      records C(begin/inquire), C(prepare/register), C(perform/source_released), C(perform/send),
      C(finish/resumed), C(finish/dest_acquired), C(confirm/source_stopped); the guide lists every path.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: C(phase/step), for example C(perform/source_released).
      type: str
    host:
      description: The host the checkpoint is about.
      type: str
    at:
      description: When it happened (UTC, ISO 8601 with milliseconds), taken from what saw it.
      type: str
    ok:
      description: Whether the step succeeded or its verification passed.
      type: bool
    source:
      version_added: 0.2.0
      description:
        - What saw it - C(event) (a libvirt lifecycle event, stamped as it arrived), C(probe) (a lease or
          state probe, stamped when it ran) or C(api) (a libvirt call, stamped when it returned).
      type: str
    verified:
      version_added: 0.2.0
      description: Whether the claim was checked; RV(lock_checkpoints[].check) says with what.
      type: bool
    check:
      version_added: 0.2.0
      description: What checked the claim (a lease probe, a state read), null when nothing did.
      type: str
    resources:
      description: Lease resources concerned.
      type: list
      elements: str
    detail:
      description: What happened, who holds what.
      type: str
    leases:
      description:
        - The probe at this checkpoint - C(resource), C(kind), C(held), C(holder), C(holder_pid), C(holder_process),
          C(holder_host), C(lock) (C(exclusive), C(shared) or null) and C(sharers).
        - C(holder) is C(source) (the source holds it for this guest), C(source_shared) (a shareable disk's shared
          lock the source's virtlockd keeps for the other guests there sharing it, named in C(sharers) - the lock
          cannot show this guest's own share), C(dest) (sanlock, which names the holder's host), C(other) (another
          holder), C(unknown) (could not be verified; never taken as released) or null (not held).
      type: list
      elements: dict
    probed_at:
      description:
        - When the lease probe of this checkpoint ran (UTC, like RV(lock_checkpoints[].at)). An event-stamped
          checkpoint's probe runs after the event, outside libvirt's event thread.
      type: str
  sample:
    - {name: perform/source_released, host: hv1, at: "2025-01-01T10:00:00.001Z", ok: true, source: event,
       verified: true, check: "lease probe (F_GETLK) from hv1", resources: [], detail: ""}
leases:
  description:
    - The guest's leases at the end, probed on the source host - C(held), C(held_here) (by the source's virtlockd),
      C(holder_pid), C(holder), C(lock), C(sharers).
  returned: when the guest was found
  type: list
  elements: dict
lease_gap_ms:
  description:
    - Milliseconds during which no host held the guest's leases - from the source's release (its SUSPENDED
      event with QEMU) to the destination's RESUMED event. Null when either event was not seen.
  returned: always
  type: int
downtime_ms:
  description:
    - Milliseconds from the source's vCPUs stopping for the migration (SUSPENDED event) to the destination's
      RESUMED event. Null when either event was not seen - never a figure from the module's own clock.
  returned: always
  type: int
timing_source:
  description: C(events) when RV(downtime_ms) or RV(lease_gap_ms) came from events, else null.
  returned: always
  type: str
events:
  description: The lifecycle events received (role, event, detail, at).
  returned: when events were watched
  type: list
  elements: dict
job:
  description:
    - libvirt's completed job statistics - C(elapsed_ms), C(downtime_ms) (libvirt's own), C(data_total),
      C(memory_iterations), C(memory_bps), C(setup_ms).
  returned: always
  type: dict
plan:
  description:
    - Flags, typed parameters, handoff style and lock settings the migration uses.
    - With O(convergence), C(convergence_plan) - computed for this guest's size, in check mode too -
      C(data_gib), C(downtime_steps) (C(step), C(after_s), C(downtime_ms)), C(step_delay_s),
      C(completion_timeout_s), C(timeout_action), C(progress_timeout_s) and the auto-converge settings.
  returned: always
  type: dict
outcome:
  description:
    - How the job ended under O(convergence) - C(converged) (at the first allowed downtime),
      C(converged_after_steps) (after the allowed downtime was raised), C(switched_to_postcopy),
      C(forced_by_pause), C(aborted_no_progress), C(aborted_timeout), C(postcopy_failed) (failed after the
      switch - the guest is left where libvirt left it, paused by the module where libvirt lets it; the message
      says what each host reports), C(failed) (any other failure).
    - C(postcopy_failed) is also returned by a post-copy migration without O(convergence) (O(postcopy)) that
      failed after the switch, and by a run that finds a copy left in post-copy or after a failed post-copy.
  returned: when O(convergence) is set and the migration started, and whenever a post-copy failed
  type: str
  sample: converged_after_steps
progress:
  description:
    - The job as the module saw it - C(samples) (at most 60; when full every other one is dropped and the
      interval doubled, so they cover the whole run) each with C(elapsed_s), C(data_remaining), C(data_total),
      C(dirty_rate_bps), C(remaining_mean) (of the last progress window), C(iteration), C(downtime_ms) (allowed
      then), C(throttle) (auto-converge, percent) and C(memory_bps); C(thinned) (samples dropped);
      C(sample_every_s); C(steps) (each downtime raise - C(step), C(downtime_ms), C(elapsed_s),
      C(data_remaining), C(iteration)); C(action) (the final action taken - C(do), C(reason), C(elapsed_s),
      C(detail), C(failed) when libvirt refused it).
  returned: when O(convergence) is set and the migration started
  type: dict
checks:
  description:
    - Pre-flight checks (destination network and pools, lock manager, leases held by the source, the
      destination's lock manager and lockspace - C(dest_lock_manager), C(dest_lockspace)) with C(ok) and
      C(detail).
  returned: always
  type: list
  elements: dict
libvirt_error:
  version_added: 0.2.0
  description: libvirt's C(code), C(domain) and C(message), when a libvirt call failed.
  returned: failure
  type: dict
"""

from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.migration import MigrationManager
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.plan import MIGRATE_ARGUMENT_SPEC
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def _migrate(_conn, module):
    return MigrationManager(module.params, module.check_mode).run()


def main():
    # the migration opens its own connections, to the source and the destination
    run_libvirt_module(MIGRATE_ARGUMENT_SPEC, work=_migrate, connect=False)


if __name__ == "__main__":
    main()
