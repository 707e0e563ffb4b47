# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hypervisor driver profiles: what each libvirt driver supports and how it takes disk leases.

Modules and managers ask the profile (``conn.profile``) instead of testing URIs or driver names.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError

# When a driver's lock manager takes a guest's disk leases.
LEASES_ON_VCPU_START = "on_vcpu_start"  # qemu: at boot/resume; a guest created paused holds none
LEASES_ON_CREATE = "on_create"  # libxl: right after creation, even when left paused
LEASES_NEVER = "never"  # no lock manager (lxc, test)

ALL_MIGRATION_FLAGS = (
    "LIVE",
    "PEER2PEER",
    "TUNNELLED",
    "PERSIST_DEST",
    "UNDEFINE_SOURCE",
    "PAUSED",
    "NON_SHARED_DISK",
    "NON_SHARED_INC",
    "CHANGE_PROTECTION",
    "UNSAFE",
    "OFFLINE",
    "COMPRESSED",
    "ABORT_ON_ERROR",
    "AUTO_CONVERGE",
    "RDMA_PIN_ALL",
    "POSTCOPY",
    "TLS",
    "PARALLEL",
    "NON_SHARED_SYNCHRONOUS_WRITES",
)

ALL_UNDEFINE_FLAGS = ("MANAGED_SAVE", "SNAPSHOTS_METADATA", "NVRAM", "KEEP_NVRAM", "CHECKPOINTS_METADATA")

# Flag dependencies libvirt enforces for every driver.
MIGRATION_FLAG_REQUIRES = {"TUNNELLED": ("PEER2PEER",)}


class DriverProfile:
    """How one libvirt driver behaves.

    name: qemu | libxl | lxc | test
    leases_taken: LEASES_ON_VCPU_START | LEASES_ON_CREATE | LEASES_NEVER
    lock_conf / lockd_conf / sanlock_conf: the driver's config files naming its lock manager
        (None: the driver has no lock manager)
    """

    def __init__(
        self,
        name,
        driver_types,
        migration_flags,
        leases_taken,
        lock_conf=None,
        lockd_conf=None,
        sanlock_conf=None,
        can_start_paused=True,
        undefine_flags=ALL_UNDEFINE_FLAGS,
        guest_agent=False,
        domain_types=(),
        managed_save=True,
        snapshots=True,
    ):
        self.name = name
        self.driver_types = tuple(driver_types)
        self.migration_flags = frozenset(migration_flags)
        self.leases_taken = leases_taken
        self.lock_conf = lock_conf
        self.lockd_conf = lockd_conf
        self.sanlock_conf = sanlock_conf
        self.can_start_paused = can_start_paused
        self.undefine_flags = frozenset(undefine_flags)
        self.guest_agent = guest_agent
        self.domain_types = tuple(domain_types)
        self.managed_save = managed_save
        self.snapshots = snapshots

    def __repr__(self):
        return "DriverProfile({!r})".format(self.name)

    @property
    def has_lock_manager(self):
        """Whether the driver can be configured with a lock manager at all."""
        return self.lock_conf is not None

    @property
    def paused_guest_holds_leases(self):
        """True when a guest created paused already holds its leases (libxl), False for qemu."""
        return self.leases_taken == LEASES_ON_CREATE

    def migration_flags_value(self, names):
        """OR of libvirt.VIR_MIGRATE_<name> for ``names``; ValidationError naming any illegal flag."""
        names = [n.upper() for n in names]
        illegal = sorted(n for n in names if n not in self.migration_flags)
        if illegal:
            raise ValidationError(
                "migration flag(s) {} not supported by the {} driver (allowed: {})".format(
                    ", ".join(illegal), self.name, ", ".join(sorted(self.migration_flags))
                )
            )
        for flag, needs in MIGRATION_FLAG_REQUIRES.items():
            if flag in names:
                missing = [n for n in needs if n not in names]
                if missing:
                    raise ValidationError("migration flag {} requires {}".format(flag, ", ".join(missing)))
        value = 0
        for n in names:
            value |= _flag("VIR_MIGRATE_" + n)
        return value

    def undefine_flags_value(self, names):
        """OR of the VIR_DOMAIN_UNDEFINE_<name> flags this driver accepts; others are dropped."""
        value = 0
        for n in names:
            n = n.upper()
            if n in self.undefine_flags:
                value |= _flag("VIR_DOMAIN_UNDEFINE_" + n)
        return value


def _flag(name):
    if libvirt is None or not hasattr(libvirt, name):
        raise ValidationError("this libvirt-python has no {}".format(name))
    return getattr(libvirt, name)


QEMU = DriverProfile(
    "qemu",
    driver_types=("QEMU",),
    migration_flags=ALL_MIGRATION_FLAGS,
    leases_taken=LEASES_ON_VCPU_START,
    lock_conf="/etc/libvirt/qemu.conf",
    lockd_conf="/etc/libvirt/qemu-lockd.conf",
    sanlock_conf="/etc/libvirt/qemu-sanlock.conf",
    guest_agent=True,
    domain_types=("qemu", "kvm"),
)

LIBXL = DriverProfile(
    "libxl",
    driver_types=("Xen", "XEN", "LIBXL", "xenlight"),
    migration_flags=("LIVE", "PEER2PEER", "TUNNELLED", "PERSIST_DEST", "UNDEFINE_SOURCE", "PAUSED"),
    leases_taken=LEASES_ON_CREATE,
    lock_conf="/etc/libvirt/libxl.conf",
    lockd_conf="/etc/libvirt/libxl-lockd.conf",
    sanlock_conf="/etc/libvirt/libxl-sanlock.conf",
    undefine_flags=("MANAGED_SAVE", "NVRAM", "KEEP_NVRAM"),
    domain_types=("xen",),
    snapshots=False,
)

LXC = DriverProfile(
    "lxc",
    driver_types=("LXC",),
    migration_flags=(),
    leases_taken=LEASES_NEVER,
    undefine_flags=(),
    domain_types=("lxc",),
    managed_save=False,
    snapshots=False,
)

TEST = DriverProfile(
    "test",
    driver_types=("TEST", "Test"),
    migration_flags=ALL_MIGRATION_FLAGS,
    leases_taken=LEASES_NEVER,
    can_start_paused=False,  # testDomainCreateWithFlags accepts no flags
    undefine_flags=("MANAGED_SAVE", "SNAPSHOTS_METADATA"),
    domain_types=("test", "qemu", "kvm"),
)

PROFILES = (QEMU, LIBXL, LXC, TEST)
_SCHEMES = {"qemu": QEMU, "kvm": QEMU, "xen": LIBXL, "libxl": LIBXL, "lxc": LXC, "test": TEST}


def get_profile(name):
    for p in PROFILES:
        if p.name == name:
            return p
    raise ValidationError("unknown driver profile {}".format(name))


def profile_for_driver(driver_type, uri=None):
    """Profile from libvirt's getType() (falls back to the URI scheme when the type is unknown)."""
    for p in PROFILES:
        if driver_type in p.driver_types or (driver_type or "").upper() in [t.upper() for t in p.driver_types]:
            return p
    if uri:
        scheme = urlsplit(uri).scheme.split("+", 1)[0]
        if scheme in _SCHEMES:
            return _SCHEMES[scheme]
    raise ValidationError("libvirt driver {!r} is not supported by lockstep.virt".format(driver_type))


def profile_for_connection(conn):
    return profile_for_driver(conn.driver, conn.uri)
