#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: domain
short_description: Define, start, stop and remove libvirt guests, with their leases verified
version_added: 0.1.0
description:
  - Manages one libvirt domain (guest) declaratively, from libvirt XML or from a structured O(spec).
  - Compares only what you specify with libvirt's definition, so a second identical run reports no change;
    what libvirt fills in (a UUID you did not give, MAC and PCI addresses, aliases, controllers,
    default models) is never a difference. Devices you manage (disks, interfaces, leases, channels,
    graphics, ...) are compared as sets, so removing one from the definition is a change.
  - A guest it defines carries the collection's managed mark in its C(<metadata>). A guest defined by other
    means whose definition already matches is left as it is, unmarked; it gets the mark the first time this
    module redefines it.
  - A running guest takes some changes live (libvirt's LIVE flag; the definition is updated first) -
    disks (C(device=disk) on a C(virtio) or C(scsi) bus) and C(virtio) interfaces added or removed are
    hot-plugged or unplugged, a disk whose O(spec.disks[].size) grew is resized online, the current memory
    (balloon) and current vCPU count change within the running maximums. Each is listed in RV(live_changes)
    and named in the diff, one line each after C(live:) (V(hotplug disk vdb), V(resize vda 1 GiB -> 2 GiB)).
  - Any other change to the definition of a running guest applies at its next boot and is reported with
    RV(pending_restart) and RV(pending_differences); O(restart_on_change=true) restarts it. An unplug the guest
    does not complete (it must release the device) stays a pending difference. A balloon target the guest does
    not reach (no balloon driver) is set once and reported as a warning, not as a pending difference.
  - Starting a guest follows the lock manager's ordering rule (O(lock.acquire=after_create)) - the guest is
    created paused, resumed (the lock manager takes its leases as the vCPUs start), its leases are checked
    to be held by this host's virtlockd, and only then is it reported running. Every step is returned as a
    checkpoint in RV(lock_checkpoints).
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
  - lockstep.virt.definition
  - lockstep.virt.sizes
attributes:
  check_mode:
    support: full
    details: Predicts every action (define, start, shutdown, undefine, ...) without doing it.
  diff_mode:
    support: full
    details: The diff shows state, autostart and the part of the definition you manage, before and after.
  idempotent:
    support: full
options:
  name:
    description: Name of the domain.
    type: str
    required: true
  state:
    description:
      - V(present) - the domain is defined (from O(xml) or O(spec) when given); its run state is left alone.
      - V(running) - defined and running; a paused guest is resumed, a stopped one started (see O(lock)).
      - V(paused) - defined and running with its vCPUs paused (a qemu guest started paused holds no lease).
      - V(shutdown) - gracefully shut down, waiting up to O(timeout) seconds; see O(force).
      - V(destroyed) - forcefully stopped (power cut).
      - V(absent) - stopped and undefined (see O(undefine), O(remove_storage)). Absent already is no change.
    type: str
    choices: [present, absent, running, paused, shutdown, destroyed]
    default: present
  spec:
    type: dict
    suboptions:
      type:
        description: Domain type. V(qemu) (emulation) works everywhere; V(kvm) needs /dev/kvm.
        type: str
        choices: [qemu, kvm]
        default: qemu
      uuid:
        description:
          - UUID of the domain. When not given, the existing domain's UUID is kept; a new domain gets a
            generated one.
        type: str
      title:
        description: Short title.
        type: str
      description:
        description: Free text description.
        type: str
      memory:
        description:
          - Maximum memory, a size (see the note on sizes); a number without a unit is MiB.
          - Must be a whole number of MiB between 1 MiB and 16 TiB, so V(2G) or V(2GiB), not V(2GB).
        type: raw
        required: true
      current_memory:
        description:
          - Memory at boot (balloon), a size read as O(spec.memory) is; defaults to O(spec.memory).
        type: raw
      vcpus:
        description: Number of virtual CPUs (1 to 4096).
        type: int
        default: 1
      cpu:
        description: CPU model.
        type: dict
        suboptions:
          mode:
            description: CPU mode. V(host-passthrough) and V(host-model) need V(kvm).
            type: str
            choices: [host-passthrough, host-model, custom, maximum]
            default: custom
          model:
            description: CPU model name (required with V(custom)), for example V(qemu64).
            type: str
      arch:
        description: Guest architecture (for example V(x86_64)); libvirt's default when not given.
        type: str
      machine:
        description: Machine type, for example V(pc) or V(q35) (versioned names such as V(pc-i440fx-7.2) match V(pc)).
        type: str
      firmware:
        description:
          - V(bios) (SeaBIOS) or V(uefi) (OVMF, chosen by libvirt's firmware autoselection, C(<os firmware='efi'>),
            from the firmware descriptors in C(/usr/share/qemu/firmware); Debian's C(ovmf) package ships them).
          - With V(uefi) libvirt gives the guest its own NVRAM (UEFI variables),
            C(/var/lib/libvirt/qemu/nvram/<name>_VARS.fd), made from the firmware's template at the first start
            and kept from then on (also when O(spec.secure_boot) changes; O(state=absent) removes it).
          - The live XML of a running UEFI guest names the loader and NVRAM libvirt chose instead of C(firmware='efi');
            that is not a difference.
        type: str
        choices: [bios, uefi]
        default: bios
      secure_boot:
        version_added: 0.3.0
        description:
          - UEFI Secure Boot, with O(spec.firmware=uefi) only (refused otherwise).
          - V(true) - a Secure Boot firmware with Microsoft's keys enrolled (C(<feature name='secure-boot'/>) and
            C(<feature name='enrolled-keys'/>) enabled) and SMM on (C(<features><smm state='on'/>)). It needs the
            q35 machine type - O(spec.machine) is set to V(q35) when not given, and another machine type is refused.
          - V(false) - a firmware without Secure Boot (C(<feature enabled='no' name='secure-boot'/>)).
          - Not given - libvirt's first matching firmware (on Debian 12, a Secure Boot one when SMM is on).
        type: bool
      boot:
        description: Boot device order. Mutually exclusive with O(spec.kernel) and per-disk O(spec.disks[].boot_order).
        type: list
        elements: str
        choices: [hd, cdrom, network, fd]
      kernel:
        description: Path (on the hypervisor) of a kernel to boot directly.
        type: str
      initrd:
        description: Path of the initrd for O(spec.kernel).
        type: str
      cmdline:
        description: Kernel command line for O(spec.kernel).
        type: str
      features:
        description: Hypervisor features to enable (C(<features>) children), for example V(acpi), V(apic), V(pae).
        type: list
        elements: str
        default: [acpi, apic]
      on_poweroff:
        description: Action when the guest powers off.
        type: str
        choices: [destroy, restart, preserve, rename-restart, coredump-destroy, coredump-restart]
      on_reboot:
        description: Action when the guest reboots.
        type: str
        choices: [destroy, restart, preserve, rename-restart, coredump-destroy, coredump-restart]
      on_crash:
        description: Action when the guest crashes.
        type: str
        choices: [destroy, restart, preserve, rename-restart, coredump-destroy, coredump-restart]
      disks:
        description: Disks, in order.
        type: list
        elements: dict
        default: []
        suboptions:
          type:
            description: V(file), V(block) or V(volume); derived from O(spec.disks[].path) (V(/dev/...) is a block
              device) or O(spec.disks[].pool) when not given.
            type: str
            choices: [file, block, volume]
          path:
            description: Absolute path of the image file or block device on the hypervisor.
            type: str
          pool:
            description: Storage pool of a volume disk (with O(spec.disks[].volume)).
            type: str
          volume:
            description: Volume name in O(spec.disks[].pool).
            type: str
          target:
            description: Target device name (V(vda), V(sdb), ...); assigned in order per bus when not given.
            type: str
          bus:
            description: Disk bus; V(virtio) by default, V(ide) (V(sata) on q35) for a cdrom.
            type: str
            choices: [virtio, sata, scsi, ide, usb]
          device:
            description: Device kind. A cdrom is always read-only.
            type: str
            choices: [disk, cdrom, floppy, lun]
            default: disk
          format:
            description: Image format (V(raw), V(qcow2), ...).
            type: str
          cache:
            description: Cache mode.
            type: str
            choices: [default, none, writethrough, writeback, directsync, unsafe]
          readonly:
            description: Read-only disk (never leased by the lock manager).
            type: bool
            default: false
          shareable:
            description: Shareable disk (leased with a shared lock).
            type: bool
            default: false
          boot_order:
            description: Per-device boot order (instead of O(spec.boot)).
            type: int
          size:
            version_added: 0.2.0
            description:
              - Size the guest sees (V(2G), V(512MiB), bytes). While the guest runs, a disk smaller than this is
                grown online (block resize; its image grows too); a disk is never shrunk. A shut-off guest's
                disk is left alone (grow its volume with M(lockstep.virt.volume)).
            type: raw
      interfaces:
        description: Network interfaces, in order. Give exactly one of O(spec.interfaces[].network) or
          O(spec.interfaces[].bridge).
        type: list
        elements: dict
        default: []
        suboptions:
          network:
            description: libvirt network to attach to.
            type: str
          bridge:
            description: Host bridge to attach to.
            type: str
          model:
            description: NIC model.
            type: str
            default: virtio
          mac:
            description: MAC address; libvirt generates one when not given, and a redefinition keeps it.
            type: str
      graphics:
        description: A graphical console. None when not given.
        type: dict
        suboptions:
          type:
            description: Protocol.
            type: str
            choices: [vnc, spice]
            default: vnc
          listen:
            description: Address to listen on.
            type: str
          port:
            description: Fixed port; an automatic port when not given.
            type: int
      serial_console:
        description: Add a serial port on a pty with a console on it (C(virsh console)).
        type: bool
        default: false
      guest_agent:
        description: Add the qemu guest agent channel (C(org.qemu.guest_agent.0)).
        type: bool
        default: false
      channels:
        description: Other virtio channels.
        type: list
        elements: dict
        default: []
        suboptions:
          name:
            description: Channel target name, for example V(org.qemu.guest_agent.0).
            type: str
            required: true
          type:
            description: Channel host side.
            type: str
            choices: [unix, pty, spicevmc]
            default: unix
      tpm:
        version_added: 0.3.0
        description:
          - A virtual TPM emulated by swtpm (C(<tpm><backend type='emulator'/></tpm>)); the hypervisor needs the
            C(swtpm) and C(swtpm-tools) packages. libvirt starts one swtpm per guest and keeps its state in
            C(/var/lib/libvirt/swtpm/<uuid>/), removed with the guest (O(state=absent)) unless
            O(spec.tpm.persistent_state) keeps it.
          - A live migration with M(lockstep.virt.migrate) carries the TPM state to the destination in QEMU's
            migration stream into the destination's own C(/var/lib/libvirt/swtpm/<uuid>/) (measured on libvirt 9.0 with
            swtpm 0.7); keep that directory local to each host - libvirt 9.0 does not migrate a TPM state kept on
            storage the hosts share.
        type: dict
        suboptions:
          model:
            description: The TPM interface. V(tpm-crb) is TPM 2.0 only.
            type: str
            choices: [tpm-crb, tpm-tis]
            default: tpm-crb
          version:
            description: TPM version; V(1.2) needs O(spec.tpm.model=tpm-tis).
            type: str
            choices: ['2.0', '1.2']
            default: '2.0'
          persistent_state:
            description:
              - Keep the TPM state when the guest is undefined (C(persistent_state='yes')), and a transient
                guest's when it stops; libvirt leaves it in C(/var/lib/libvirt/swtpm/<uuid>/) after O(state=absent).
            type: bool
            default: false
      lease:
        description:
          - A VM lease held while the guest runs, whatever its disks (lockd never leases network disks such as rbd).
          - Written as C(<lease><lockspace/><key/><target path/></lease>); its file is
            C(path/lockspace/key), which the module creates when missing (lockd creates disk lease files, not these).
          - O(spec.lease.path) + C(/) + O(spec.lease.lockspace) must be the host's C(file_lockspace_dir).
        type: dict
        suboptions:
          key:
            description: Lease key; defaults to the guest's UUID.
            type: str
          lockspace:
            description: Lockspace name; defaults to the last component of C(file_lockspace_dir) (usually V(lockd)).
            type: str
          path:
            description: Directory holding the lockspace; defaults to the parent of C(file_lockspace_dir).
            type: str
      metadata:
        description: Flat string key/values stored in the domain's C(<metadata>) under the collection's namespace.
        type: dict
        default: {}
      cloud_init:
        version_added: 0.2.0
        description:
          - A cloud-init NoCloud seed for the guest - an ISO 9660 image labelled C(cidata) holding C(user-data),
            C(meta-data) and C(network-config), built on the hypervisor with xorriso, uploaded as a raw volume
            into O(spec.cloud_init.pool) and attached as a read-only CD-ROM.
          - The seed is rebuilt only when its content changes (its SHA-256 is kept in the collection's managed
            mark of the definition); a running guest reads a new seed at its next boot (RV(pending_restart)).
          - The seed volume is removed with the guest (O(state=absent)).
        type: dict
        suboptions:
          user_data:
            description:
              - The user data - text as it is (start it with C(#cloud-config) for cloud-config), or a dictionary
                written as cloud-config. An empty cloud-config when not given.
            type: raw
          meta_data:
            description: The meta data, text or a dictionary. Default C(instance-id) and C(local-hostname) = O(name).
            type: raw
          network_config:
            description: Network configuration (version 1 or 2), text or a dictionary. No file when not given.
            type: raw
          pool:
            description: Storage pool of the seed volume. Default the pool of the first disk that is a volume.
            type: str
          volume:
            description: Name of the seed volume. Default C(<name>-cidata.iso).
            type: str
  autostart:
    description: Start the domain when the host's libvirt starts. Left alone when not given.
    type: bool
  timeout:
    description: Seconds to wait for a graceful shutdown (O(state=shutdown), and restarts).
    type: int
    default: 60
  force:
    description:
      - With O(state=shutdown) (and restarts) destroy the guest when it has not stopped after O(timeout).
      - When false the task fails saying the guest did not stop.
    type: bool
    default: false
  restart_on_change:
    description:
      - Restart a running guest whose definition changed (graceful shutdown as for O(state=shutdown), then a
        start as for O(state=running)). Otherwise the change applies at its next boot (RV(pending_restart)).
    type: bool
    default: false
  undefine:
    description: With O(state=absent), what to remove with the definition.
    type: list
    elements: str
    choices: [nvram, managed_save, snapshots_metadata, checkpoints_metadata]
    default: [nvram, managed_save, snapshots_metadata, checkpoints_metadata]
  remove_storage:
    description:
      - With O(state=absent), also delete the guest's read-write, non-shareable disks (storage volumes through
        libvirt; plain files only on a local URI). Never done otherwise.
    type: bool
    default: false
  wait_for:
    version_added: 0.3.0
    description:
      - V(address) - with O(state=running), once the guest runs, wait up to O(wait_timeout) seconds for an address -
        its guest agent's (C(virsh domifaddr --source agent); needs O(spec.guest_agent) and an agent in the guest),
        else the DHCP lease of its libvirt network (C(--source lease)). Loopback and link-local addresses do not count.
        They are returned in RV(addresses).
      - A guest without one after O(wait_timeout) fails the task, saying what each source answered
        (RV(address_sources)).
      - Waiting is never a change. In check mode the addresses of a guest that already runs are read once, without
        waiting or failing.
      - In M(lockstep.virt.apply), a guest item with O(wait_for) is waited for before the next item.
    type: str
    choices: [address]
  wait_timeout:
    version_added: 0.3.0
    description: Seconds O(wait_for) waits.
    type: int
    default: 300
  lock:
    description: How leases are taken and checked when the guest starts.
    type: dict
    default: {}
    suboptions:
      acquire:
        description:
          - V(after_create) - create the guest paused, resume it (the lock manager takes the leases as the vCPUs
            start), verify the leases, then report it running. If taking the leases fails the paused guest is
            destroyed - it holds nothing, so there is nothing to release.
          - V(libvirt) - start it in one call and only verify afterwards.
        type: str
        choices: [after_create, libvirt]
        default: after_create
      required:
        description:
          - Fail (and leave nothing running) when the guest would run with read-write disks or a VM lease not
            held by this host - the lock manager is off or misconfigured, or the leases are held elsewhere.
        type: bool
        default: false
      acquire_timeout:
        description:
          - Seconds to keep retrying a start refused with "resource busy" (another host still tearing the guest
            down). The final error names the lease and, when known, its holder.
        type: int
        default: 0
      verify:
        description:
          - Probe the leases after the start (F_GETLK on virtlockd's lease files; with sanlock, this host's
            daemon and the leases' leader records) and record the result.
        type: bool
        default: true
seealso:
  - module: lockstep.virt.domain_info
  - name: libvirt lock managers
    description: virtlockd and its lease files.
    link: https://libvirt.org/kbase/locking-lockd.html
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
# Hosts whose qemu-lockd.conf has file_lockspace_dir = "/var/lib/lockstep-lab/shared/lockd"
- name: A disk image on the shared storage
  ansible.builtin.command:
    cmd: qemu-img create -f qcow2 /var/lib/lockstep-lab/shared/images/web1.qcow2 64M
    creates: /var/lib/lockstep-lab/shared/images/web1.qcow2

- name: Define a small BIOS guest from a spec, with a VM lease, and start it
  lockstep.virt.domain:
    name: web1
    state: running
    spec:
      type: qemu
      memory: 32
      vcpus: 1
      boot: [hd]
      disks:
        - path: /var/lib/lockstep-lab/shared/images/web1.qcow2
          format: qcow2
      serial_console: true
      lease: {}   # key = the guest's UUID, in /var/lib/lockstep-lab/shared/lockd
    lock:
      acquire: after_create
      required: true
      acquire_timeout: 20
  register: web1

- name: Show when each lease was taken
  ansible.builtin.debug:
    var: web1.lock_checkpoints

- name: Define a guest from libvirt XML without starting it
  lockstep.virt.domain:
    name: db1
    state: present
    autostart: false
    xml: |
      <domain type='qemu'>
        <name>db1</name>
        <memory unit='MiB'>32</memory>
        <vcpu>1</vcpu>
        <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
        <devices>
          <disk type='file' device='disk'>
            <driver name='qemu' type='qcow2'/>
            <source file='/var/lib/lockstep-lab/shared/images/db1.qcow2'/>
            <target dev='vda' bus='virtio'/>
          </disk>
        </devices>
      </domain>

- name: Give web1 more memory; it applies at the next boot unless restart_on_change is set
  lockstep.virt.domain:
    name: web1
    spec:
      memory: 64
      boot: [hd]
      disks:
        - path: /var/lib/lockstep-lab/shared/images/web1.qcow2
          format: qcow2
      serial_console: true
      lease: {}
  register: changed_web1   # changed_web1.pending_restart is true while web1 runs

- name: A UEFI guest with Secure Boot and a TPM 2.0 (no disk - it stays in its firmware)
  lockstep.virt.domain:
    name: sb1
    state: running
    spec:
      memory: 64
      firmware: uefi
      secure_boot: true   # q35 machine, SMM on
      tpm:
        persistent_state: true

- name: Start a guest and wait for the address its network's DHCP (or its guest agent) gives it
  lockstep.virt.domain:
    name: web2
    state: running
    spec:
      memory: 256
      disks:
        - path: /var/lib/lockstep-lab/shared/images/web2.qcow2
          format: qcow2
      interfaces:
        - network: default
      guest_agent: true
    wait_for: address
    wait_timeout: 300
  register: web2

- name: Its first address
  ansible.builtin.debug:
    msg: "{{ web2.addresses[0].address }}"

- name: Shut down gracefully, destroying it after 30 seconds if it ignores ACPI
  lockstep.virt.domain:
    name: web1
    state: shutdown
    timeout: 30
    force: true

- name: Remove the guest with its nvram and snapshot metadata, keeping its disks
  lockstep.virt.domain:
    name: db1
    state: absent
"""

RETURN = r"""
domain:
  description: The domain after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    name: {description: "Name.", type: str, returned: success}
    uuid: {description: "UUID.", type: str, returned: success}
    id: {description: "libvirt id while running, else null.", type: int, returned: success}
    state:
      description: "running, paused, shutoff, crashed, pmsuspended, ..."
      type: str
      returned: success
    persistent: {description: "Whether the domain has a persistent definition.", type: bool, returned: success}
    autostart: {description: "Whether it starts with libvirt.", type: bool, returned: success}
  sample: {name: web1, uuid: 3c1c4b4e-9a4e-4c32-9f0a-1b4f1b0f2a11, id: 4, state: running, persistent: true,
           autostart: false}
actions:
  description: >-
    What was done (or would be, in check mode), in order - define, redefine, build_seed (the cloud-init seed),
    autostart, start, resume, pause, shutdown, destroy, restart, hotplug, unplug, resize, set_memory, set_vcpus,
    undefine, remove_seed, remove_storage, ...
  returned: always
  type: list
  elements: str
  sample: [build_seed, define, start]
cloud_init_seed:
  version_added: 0.2.0
  description: The cloud-init seed built by this task - its pool, volume, path on the host and content hash.
  returned: when the seed was built
  type: dict
  sample:
    pool: lab-images
    volume: web1-cidata.iso
    path: /var/lib/lockstep-lab/shared/pools/lab-images/web1-cidata.iso
    hash: "sha256:0c5b..."
pending_restart:
  description: The guest runs an older definition than the persistent one; the change applies at its next boot.
  returned: always
  type: bool
pending_differences:
  version_added: 0.2.0
  description: Where what the guest runs differs from its definition after the live changes.
  returned: when RV(pending_restart) is true or the guest was restarted for it
  type: list
  elements: str
  sample: ["/domain/memory/text()"]
live_changes:
  version_added: 0.2.0
  description: >-
    The changes made to the running guest without a restart (or that would be, in check mode) -
    hotplug and unplug of disks and interfaces, resize, memory, vcpus.
  returned: when there were any
  type: list
  elements: str
  sample: [hotplug disk vdb, resize vda 1 GiB -> 2 GiB, memory 64 MiB -> 48 MiB]
differences:
  description: Paths in the definition that differed from what you specified.
  returned: when the definition changed
  type: list
  elements: str
  sample: ["/domain/memory/text()"]
lock_checkpoints:
  description: Ordered checkpoints of the lease-relevant steps.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: >-
        defined, lease_files_created, created_paused, resumed, leases_acquired, leases_verified, running,
        acquire_failed, destroyed_paused, rolled_back, paused, shutdown_requested, stopped, stop_timeout,
        destroyed, leases_released, undefined, storage_removed, live_change, pending_restart.
      type: str
    host: {description: "Hypervisor host name.", type: str}
    at:
      description: When it happened (UTC, ISO 8601, milliseconds), taken from what saw it; the list is ordered by it.
      type: str
      sample: "2025-01-01T12:00:00.123Z"
    ok: {description: "Whether the step succeeded as expected.", type: bool}
    resources: {description: "Lease files concerned.", type: list, elements: str}
    source:
      version_added: 0.2.0
      description: What saw it - C(event) (a libvirt event), C(probe) (a lease or state probe), C(api) (a call).
      type: str
    verified:
      description: Whether the claim was checked (a probe, a read back); C(check) says how.
      type: bool
      version_added: 0.2.0
    check: {description: "What checked the claim, null when nothing did.", type: str, version_added: 0.2.0}
    detail: {description: "Explanation.", type: str}
leases:
  description: Leases of the domain (disk leases and VM leases) and who holds them.
  returned: always
  type: list
  elements: dict
  contains:
    kind: {description: "C(disk) (a disk lease) or C(lease) (a VM lease, a C(<lease>) element).", type: str}
    resource: {description: "The lease file (null when the disk is not leased).", type: str}
    lockspace:
      description:
        - The lockspace directory, the same in every result - a disk lease's C(file_lockspace_dir) (or
          C(lvm_lockspace_dir)), a VM lease's C(<target path>/<lockspace>).
      type: str
    disk: {description: "Disk target, for disk leases (null for VM leases).", type: str}
    path: {description: "Disk path, for disk leases (null for VM leases).", type: str}
    key: {description: "Lease key, for VM leases (null for disk leases).", type: str}
    held: {description: "Whether the lease file is locked (null when it cannot be probed from here).", type: bool}
    held_here: {description: "Whether this host's virtlockd holds it.", type: bool}
    holder_pid: {description: "Pid of the holder, when visible.", type: int}
    holder_host: {description: "The holder's host name (sanlock), else null.", type: str, version_added: 0.2.0}
    lock:
      description:
        - C(exclusive) or C(shared) when held (null otherwise). virtlockd locks a C(<shareable/>) disk shared - one
          lock per host for every guest there sharing it - and every other lease exclusive.
      type: str
      version_added: 0.2.0
    sharers:
      description:
        - For a shareable disk, the other guests on this host that share it and hold leases (their shared lock is the
          same one); empty otherwise.
      type: list
      elements: str
      version_added: 0.2.0
addresses:
  version_added: 0.3.0
  description:
    - With O(wait_for=address), the guest's addresses from the first source that had one (the guest agent, then the
      DHCP lease); loopback and link-local addresses left out. Empty in check mode for a guest not yet running.
  returned: when O(wait_for) is given
  type: list
  elements: dict
  contains:
    interface:
      description: "The interface name (the guest's, e.g. C(eth0), from the agent; the host's, C(vnet0), from a lease)."
      type: str
    mac: {description: "Its MAC address.", type: str}
    address: {description: "The address.", type: str}
    prefix: {description: "Its prefix length.", type: int}
    family: {description: "C(ipv4) or C(ipv6).", type: str}
    source: {description: "C(agent) or C(lease).", type: str}
  sample:
    - {interface: eth0, mac: "52:54:00:12:34:56", address: 192.168.100.23, prefix: 24, family: ipv4, source: agent}
address_sources:
  version_added: 0.3.0
  description: When O(wait_for) timed out, what each source answered the last time (no address, or libvirt's error).
  returned: failure of O(wait_for)
  type: dict
  sample: {agent: "cannot read the agent addresses of web2: Guest agent is not responding", lease: no address}
removed_storage:
  description: Storage removed with O(remove_storage=true).
  returned: when storage was removed
  type: list
  elements: dict
libvirt_error:
  description: libvirt's C(code), C(domain) and C(message), when a libvirt call failed.
  returned: failure
  type: dict
"""


from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.domain import (
    DOMAIN_ARGUMENT_SPEC,
    DOMAIN_MUTUALLY_EXCLUSIVE,
    DomainManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(DOMAIN_ARGUMENT_SPEC, manager=DomainManager, mutually_exclusive=DOMAIN_MUTUALLY_EXCLUSIVE)


if __name__ == "__main__":
    main()
