"""A UEFI guest with Secure Boot and a vTPM (swtpm) on the lab: defined and started by lockstep.virt.domain,
unchanged on a second run in every mode, then moved live to hv2 by lockstep.virt.migrate with its TPM state.

The guest has no disk: OVMF finds nothing to boot and stays in its boot manager, which is all a firmware and
a TPM need. libvirt 9.0 picks the firmware from Debian's descriptors in /usr/share/qemu/firmware (Secure
Boot with Microsoft's keys enrolled: OVMF_CODE_4M.ms.fd) and gives the guest its NVRAM from the template; the
TPM's state lives in /var/lib/libvirt/swtpm/<uuid>/ on the host that runs it (each lab host has its own
/var/lib/libvirt), and QEMU's migration stream carries it to the destination.
"""

import os

import pytest
from migrate_helpers import failed, migrate

MODULE = "lockstep.virt.domain"
SPEC = {"type": "qemu", "memory": 64, "firmware": "uefi", "secure_boot": True, "tpm": {"persistent_state": True}}


def swtpm_runs_for(lab, host, name):
    """Whether an swtpm process of guest ``name`` runs on ``host``: its control socket names the guest, and it
    is in the mount namespace of the host's libvirtd (the lab's hosts share one pid namespace)."""
    host_ns = os.readlink("/proc/{}/ns/mnt".format(lab.state["hosts"][host]["pids"]["libvirtd"]))
    res = lab.exec(host, "pgrep", "-a", "swtpm", check=False)
    for line in res.stdout.splitlines():
        pid, _sep, argv = line.partition(" ")
        if "-{}-swtpm.sock".format(name) not in argv:
            continue
        try:
            if os.readlink("/proc/{}/ns/mnt".format(pid)) == host_ns:
                return True
        except OSError:
            continue  # it ended meanwhile
    return False


def tpm_state_files(lab, host, uuid):
    res = lab.exec(host, "find", "/var/lib/libvirt/swtpm/" + uuid, "-type", "f", "-size", "+0", check=False)
    return res.stdout.split()


def nvram(lab, host, name):
    path = "/var/lib/libvirt/qemu/nvram/{}_VARS.fd".format(name)
    return lab.exec(host, "test", "-s", path, check=False).returncode == 0


@pytest.fixture
def fw_guest(lab, guest_name):
    yield guest_name
    uuids = set()
    for host in lab.hosts:
        res = lab.virsh(host, "domuuid", guest_name, check=False)
        if res.returncode == 0:
            uuids.add(res.stdout.strip())
    lab.cleanup_domain(guest_name)
    for host in lab.hosts:  # persistent_state keeps the TPM state after an undefine
        for uuid in uuids:
            lab.exec(host, "rm", "-rf", "/var/lib/libvirt/swtpm/" + uuid, check=False)


def test_secure_boot_tpm_guest_starts_stays_unchanged_and_migrates_with_its_tpm(lab, fw_guest):
    args = {"name": fw_guest, "state": "running", "spec": SPEC}
    first = lab.module("hv1", MODULE, args)
    assert not failed(first), first.get("msg")
    assert first["changed"] is True and first["actions"] == ["define", "start"]
    uuid = first["domain"]["uuid"]
    live = lab.virsh("hv1", "dumpxml", fw_guest).stdout
    assert "secure='yes'" in live and "type='pflash'" in live, live  # a Secure Boot build of OVMF
    assert "<smm state='on'/>" in live and "machine='pc-q35-" in live
    assert swtpm_runs_for(lab, "hv1", fw_guest)
    assert nvram(lab, "hv1", fw_guest)
    assert tpm_state_files(lab, "hv1", uuid)

    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        again = lab.module("hv1", MODULE, args, check=check, diff=diff)
        assert again["changed"] is False, (check, diff, again.get("differences"), again.get("pending_differences"))
        assert again["pending_restart"] is False
        if diff:
            assert again["diff"]["before"] == again["diff"]["after"]

    moved = migrate(lab, "hv1", "hv2", fw_guest)
    assert not failed(moved), moved.get("msg")
    assert moved["changed"] is True and moved["state"] == "running"
    assert lab.domain_state("hv2", fw_guest) == "running"
    assert lab.domain_state("hv1", fw_guest) in (None, "shut off")
    assert swtpm_runs_for(lab, "hv2", fw_guest)
    assert not swtpm_runs_for(lab, "hv1", fw_guest)
    assert tpm_state_files(lab, "hv2", uuid), "no TPM state on hv2"
    assert nvram(lab, "hv2", fw_guest)

    on_hv2 = lab.module("hv2", MODULE, args)
    assert on_hv2["changed"] is False, (on_hv2.get("differences"), on_hv2.get("pending_differences"))
    assert on_hv2["pending_restart"] is False, on_hv2.get("pending_differences")
