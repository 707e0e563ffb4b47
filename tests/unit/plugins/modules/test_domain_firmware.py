"""The domain module's firmware (UEFI, Secure Boot), vTPM and ``wait_for: address``, run in-process against
libvirt's test:///default driver (which keeps <os firmware>, <firmware> features and <tpm> as given)."""

import pytest

from ansible_collections.lockstep.virt.plugins.modules import domain as domain_module

URI = "test:///default"
SPEC = {"memory": 32, "firmware": "uefi", "secure_boot": True, "tpm": {"persistent_state": True}}


def run(run_module, check_mode=False, diff=False, **kw):
    args = {"uri": URI, "name": "fw1", "spec": SPEC}
    args.update(kw)
    return run_module(domain_module.main, args, check_mode=check_mode, diff=diff)


@pytest.mark.parametrize("check_mode,diff", [(False, False), (True, False), (False, True), (True, True)])
def test_uefi_secure_boot_tpm_guest_is_idempotent_in_every_mode(hv, run_module, check_mode, diff):
    first = run(run_module, state="running")
    assert first["changed"] is True and first["actions"] == ["define", "start"]
    xml = hv.lookupByName("fw1").XMLDesc(0)
    assert "firmware='efi'" in xml and "name='secure-boot'" in xml and "<smm state='on'/>" in xml
    assert "<tpm model='tpm-crb'>" in xml and "persistent_state='yes'" in xml
    second = run(run_module, state="running", check_mode=check_mode, diff=diff)
    assert second["changed"] is False, second.get("differences")
    assert second["pending_restart"] is False


def test_tpm_and_secure_boot_changes_are_differences(hv, run_module):
    run(run_module)
    spec = dict(SPEC, secure_boot=False, tpm={"model": "tpm-tis"})
    changed = run(run_module, spec=spec, diff=True)
    assert changed["changed"] is True and changed["actions"] == ["redefine"]
    assert any("/tpm" in p for p in changed["differences"]), changed["differences"]
    assert any(p.startswith("/domain/os/firmware") for p in changed["differences"]), changed["differences"]
    assert 'enabled="no" name="secure-boot"' in changed["diff"]["after"]
    assert run(run_module, spec=spec)["changed"] is False
    without = run(run_module, spec={"memory": 32, "firmware": "uefi"})
    assert without["changed"] is True and "/domain/devices/tpm[1] (not in the definition)" in without["differences"]


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"memory": 32, "secure_boot": True}, "spec.secure_boot needs spec.firmware: uefi"),
        ({"memory": 32, "firmware": "bios", "secure_boot": False}, "spec.secure_boot needs spec.firmware: uefi"),
        ({"memory": 32, "firmware": "uefi", "secure_boot": True, "machine": "pc"}, "needs the q35 machine type"),
        ({"memory": 32, "tpm": {"model": "tpm-crb", "version": "1.2"}}, "needs spec.tpm.model tpm-tis"),
        ({"memory": 32, "tpm": {"model": "tpm-x"}}, "tpm-x"),
    ],
)
def test_firmware_and_tpm_refusals_change_nothing(hv, run_module, spec, message):
    out = run(run_module, spec=spec, state="running")
    assert out["failed"] is True and message in out["msg"], out["msg"]
    assert "fw1" not in [d.name() for d in hv.listAllDomains()]


def test_wait_for_needs_state_running(hv, run_module):
    out = run(run_module, state="present", wait_for="address")
    assert out["failed"] is True and "wait_for: address needs state: running" in out["msg"]
    assert "fw1" not in [d.name() for d in hv.listAllDomains()]


def test_wait_for_address_fails_after_the_timeout_saying_what_was_tried(hv, run_module):
    # the test driver answers every source with no address ({}), as libvirt does for a guest without one
    out = run(run_module, state="running", wait_for="address", wait_timeout=0)
    assert out["failed"] is True and out["changed"] is True and out["actions"] == ["define", "start"]
    assert "fw1 has no address after 0 s" in out["msg"]
    assert "agent: no address" in out["msg"] and "lease: no address" in out["msg"]
    assert out["addresses"] == [] and out["address_sources"] == {"agent": "no address", "lease": "no address"}


def test_wait_for_address_in_check_mode_reads_once_and_never_fails(hv, run_module):
    out = run(run_module, state="running", wait_for="address", check_mode=True)
    assert out["changed"] is True and out["addresses"] == [] and "failed" not in out
