"""Checkpoint recorder, driver profiles and the connection wrapper."""

import re

import libvirt
import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import CheckpointRecorder, utc_now
from ansible_collections.lockstep.virt.plugins.module_utils._virt.connection import (
    Connection,
    libvirt_errors,
    merge_argument_spec,
    resolve_uri,
    uri_is_local,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError, VirtError
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


def test_utc_now_format():
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", utc_now())


def test_checkpoints_are_ordered_and_complete():
    ticks = iter([1735689600.0 + i / 1000 for i in range(5)])
    rec = CheckpointRecorder(host="hv1", wall=lambda: next(ticks))
    rec.record("created_paused")
    rec.record("resumed", resources=["/l/a"])
    rec.record("leases_verified", ok=False, detail="not held", host="hv2", source="probe", verified_by="probe")
    items = rec.as_list()
    assert rec.names() == ["created_paused", "resumed", "leases_verified"]
    assert [c["at"] for c in items] == sorted(c["at"] for c in items)
    assert items[1] == {
        "name": "resumed",
        "host": "hv1",
        "at": "2025-01-01T00:00:00.001Z",
        "source": "api",
        "ok": True,
        "verified": False,
        "verified_by": None,
        "resources": ["/l/a"],
        "detail": None,
    }
    assert items[2]["ok"] is False and items[2]["host"] == "hv2"
    assert items[2]["verified"] is True and items[2]["source"] == "probe"
    assert rec.last()["name"] == "leases_verified" and len(rec) == 3
    items[1]["resources"].append("mutated")
    assert rec.as_list()[1]["resources"] == ["/l/a"]


def test_checkpoints_are_listed_by_when_they_happened():
    rec = CheckpointRecorder(host="hv1", wall=lambda: 100.0)
    rec.record("seen_late")
    rec.record("happened_first", at=99.5, source="event")
    assert rec.names() == ["happened_first", "seen_late"]
    assert rec.last()["name"] == "happened_first"
    with pytest.raises(ValueError):
        rec.record("x", source="guess")


def test_real_clock_never_goes_backwards():
    rec = CheckpointRecorder()
    for i in range(20):
        rec.record("step{}".format(i))
    ats = [c["at"] for c in rec]
    assert ats == sorted(ats) and rec.host


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


def test_connection_opens_test_driver():
    with Connection("test:///default") as conn:
        assert conn.driver == "TEST" and conn.profile is TEST and conn.local
        assert conn.lookup_domain("test").name() == "test"
        assert conn.lookup_domain("missing") is None
        assert "test" in [d.name() for d in conn.list_domains()]
        assert conn.hostname
    assert conn.virt is None


def test_unreachable_uri_is_one_clean_error():
    with pytest.raises(VirtError) as exc:
        Connection("qemu+ssh://nonexistent.invalid/system?no_tty=1")
    err = exc.value
    assert err.msg.startswith("cannot connect to qemu+ssh://nonexistent.invalid")
    assert err.code == libvirt.VIR_ERR_SYSTEM_ERROR and err.domain == libvirt.VIR_FROM_RPC
    kwargs = err.to_fail_kwargs()
    assert kwargs["libvirt_error"]["message"] and kwargs["msg"] == err.msg


def test_libvirt_errors_wraps_once():
    with Connection("test:///default") as conn:
        with pytest.raises(VirtError) as exc:
            with libvirt_errors("defining"):
                conn.virt.defineXML("<domain type='qemu'><name>bad</name><memory>-5</memory></domain>")
        assert exc.value.msg.startswith("defining: ") and exc.value.code == libvirt.VIR_ERR_XML_ERROR
        with pytest.raises(VirtError) as again:
            with libvirt_errors("outer"):
                raise exc.value
        assert again.value is exc.value  # not wrapped twice


def test_busy_detection():
    assert VirtError("x", code=libvirt.VIR_ERR_RESOURCE_BUSY).is_busy
    assert VirtError("resource busy: Lockspace resource 'k' is locked").is_busy
    assert VirtError('Failed to get "write" lock').is_busy
    assert not VirtError("no such file", code=libvirt.VIR_ERR_INTERNAL_ERROR).is_busy


def test_uri_helpers(monkeypatch):
    assert uri_is_local("qemu:///system") and uri_is_local("test:///default")
    assert not uri_is_local("qemu+ssh://root@hv2/system")
    assert uri_is_local("qemu+unix:///system")
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "test:///default")
    assert resolve_uri(None) == "test:///default"
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI")
    assert resolve_uri(None) == "qemu:///system" and resolve_uri("lxc:///") == "lxc:///"
    spec = merge_argument_spec({"name": {"type": "str"}})
    assert set(spec) == {"uri", "name"}
