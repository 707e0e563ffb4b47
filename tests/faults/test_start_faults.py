"""Faults while lockstep.virt.domain starts a guest with ``lock.acquire: after_create`` (created paused, its
leases taken as the vCPUs start, checked, and only then reported running): the VM lease busy, QEMU killed
while the guest is paused, libvirtd restarted mid-start. After each: no running copy without its leases,
the failure is clean and names what happened, and the same task run again (the fault gone) converges.

The start is held in its paused step by a process on the host that takes the guest's VM lease first and
keeps it a few seconds: the module retries the resume (``lock.acquire_timeout``) meanwhile, and the fault
goes in then.
"""

import os
import uuid

import pytest
from harness import Run, Watch, daemon_alive, kill_pids, qemu_pids, restart, wait_for
from migrate_helpers import Guest, lease_grabber

DOMAIN = "lockstep.virt.domain"


def start_args(guest, acquire_timeout):
    lock = {"acquire": "after_create", "acquire_timeout": acquire_timeout, "required": True}
    return {"name": guest.name, "state": "running", "lock": lock}


@pytest.fixture
def stopped_guest(lab):
    """The fault guest (a disk lease and a VM lease), defined on hv1 and shut off."""
    guest = Guest(lab, "sf-" + uuid.uuid4().hex[:8], "hv1")
    lab.virsh("hv1", "destroy", guest.name)
    yield guest
    if not daemon_alive(lab, "hv1"):
        restart(lab, "hv1")
    guest.remove()


def converges(lab, guest):
    """The same task, the fault gone: the guest runs on hv1 holding both leases."""
    again = Run(lab, "hv1", start_args(guest, 10), module=DOMAIN).wait()
    assert again is not None and not again["failed"], again
    assert lab.domain_state("hv1", guest.name) == "running"
    assert guest.holders() == [lab.virtlockd_pid("hv1")] * 2


def assert_clean(lab, guest, watch, result):
    assert result is not None and result["failed"], result
    assert "Traceback" not in str(result.get("msg")) + str(result.get("exception", ""))
    assert not watch.two_holders()
    state = lab.domain_state("hv1", guest.name)
    if state == "running":  # never running without its leases
        assert guest.holders() == [lab.virtlockd_pid("hv1")] * 2


def test_lease_busy(lab, stopped_guest):
    guest = stopped_guest
    with lease_grabber(lab, "hv1", guest.vm_lease, hold=30) as grab:
        assert wait_for(lambda: os.path.exists(grab["marker"]), lambda: True, 20)
        with Watch(lab, guest, hosts=("hv1",)) as watch:
            result = Run(lab, "hv1", start_args(guest, 2), module=DOMAIN).wait()
        assert_clean(lab, guest, watch, result)
        assert "busy" in result["msg"] or guest.key in result["msg"], result["msg"]
        assert lab.domain_state("hv1", guest.name) != "running"
        assert lab.virtlockd_pid("hv1") not in guest.holders()
    converges(lab, guest)


@pytest.mark.parametrize("fault", ["qemu killed while paused", "libvirtd restarted mid-start"])
def test_fault_while_paused_in_start(lab, stopped_guest, fault):
    guest = stopped_guest
    with lease_grabber(lab, "hv1", guest.vm_lease, hold=4) as grab:
        assert wait_for(lambda: os.path.exists(grab["marker"]), lambda: True, 20)
        with Watch(lab, guest, hosts=("hv1",)) as watch:
            run = Run(lab, "hv1", start_args(guest, 20), module=DOMAIN)
            # while the lease is held every QEMU of this guest is one created paused, before its resume
            found = []
            assert wait_for(lambda: found.extend(qemu_pids(lab, "hv1", guest.name)) or found, run.alive), run.output()
            if fault.startswith("qemu"):
                kill_pids(found)
            else:
                restart(lab, "hv1")
            result = run.wait()
    state = lab.domain_state("hv1", guest.name)
    if result is not None and not result["failed"]:
        # the module survived the fault: then it must truly run, holding its leases
        assert state == "running" and guest.holders() == [lab.virtlockd_pid("hv1")] * 2, (result, state)
    else:
        assert_clean(lab, guest, watch, result)
        assert state != "running" or guest.holders() == [lab.virtlockd_pid("hv1")] * 2
    converges(lab, guest)
