"""Driver profiles: what each hypervisor driver does with leases, migration and undefine."""

import libvirt
import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.profiles import (
    LEASES_ON_CREATE,
    LEASES_ON_VCPU_START,
    LIBXL,
    LXC,
    QEMU,
    TEST,
    get_profile,
    profile_for_driver,
)


def test_profiles_from_driver_types():
    assert profile_for_driver("QEMU") is QEMU
    assert profile_for_driver("Xen") is LIBXL
    assert profile_for_driver("LXC") is LXC
    assert profile_for_driver("TEST") is TEST
    assert profile_for_driver("weird", "xen+ssh://h/system") is LIBXL
    with pytest.raises(ValidationError):
        profile_for_driver("weird", "vbox:///session")
    assert get_profile("qemu") is QEMU


def test_when_leases_are_taken():
    assert QEMU.leases_taken == LEASES_ON_VCPU_START and not QEMU.paused_guest_holds_leases
    assert LIBXL.leases_taken == LEASES_ON_CREATE and LIBXL.paused_guest_holds_leases
    assert QEMU.has_lock_manager and LIBXL.has_lock_manager
    assert not LXC.has_lock_manager and not TEST.has_lock_manager


def test_libxl_accepts_only_its_migration_flags():
    ok = LIBXL.migration_flags_value(["LIVE", "PEER2PEER", "TUNNELLED", "PERSIST_DEST", "UNDEFINE_SOURCE", "PAUSED"])
    assert ok & libvirt.VIR_MIGRATE_LIVE and ok & libvirt.VIR_MIGRATE_PAUSED
    with pytest.raises(ValidationError) as exc:
        LIBXL.migration_flags_value(["LIVE", "AUTO_CONVERGE", "POSTCOPY"])
    assert "AUTO_CONVERGE, POSTCOPY" in exc.value.msg and "libxl" in exc.value.msg
    assert QEMU.migration_flags_value(["live", "auto_converge"]) == (
        libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_AUTO_CONVERGE
    )
    with pytest.raises(ValidationError) as exc:
        QEMU.migration_flags_value(["TUNNELLED"])
    assert "requires PEER2PEER" in exc.value.msg
    with pytest.raises(ValidationError):
        LXC.migration_flags_value(["LIVE"])


def test_undefine_flags_follow_the_driver():
    assert TEST.undefine_flags_value(["NVRAM", "MANAGED_SAVE"]) == libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    assert QEMU.undefine_flags_value(["NVRAM"]) == libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    assert LXC.undefine_flags_value(["NVRAM"]) == 0
