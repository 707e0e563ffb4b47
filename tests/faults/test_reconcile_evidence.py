"""Interleavings where "nobody holds the lease" is no evidence that a paused copy is current.

The source's libvirtd dies between the destination's Finish and the source's Confirm: the destination
finished receiving (SUSPENDED/paused), the module resumed it there (the early resume) and the source stays
paused after the send. If the guest then stops on the destination (a crash: ``virsh destroy``) before the
task is run again, the paused source copy is older than the disks: the re-run must never resume it. It
refuses, names what it saw, and changes nothing.
"""

import time
import uuid

from harness import Run, kill_libvirtd, migrate_args, restart, wait_for
from migrate_helpers import Guest
from observe import EventObserver

ATTEMPTS = 3  # the kill must land in the ~200 ms between Finish and Confirm


def finished_receiving(observer, name):
    return any(r.get("event") == "suspended" and r.get("detail") == "paused" for r in observer.events(name, host="hv2"))


def interrupt_between_finish_and_confirm(lab, guest):
    """Run the migration, SIGKILL hv1's libvirtd the moment hv2 reports the guest fully arrived; True when
    that left the guest paused on hv1 and on (or resumed on) hv2."""
    with EventObserver(lab, ("hv1", "hv2"), [guest.name]) as observer:
        run = Run(lab, "hv1", migrate_args(guest))
        hit = wait_for(lambda: finished_receiving(observer, guest.name), run.alive, timeout=90)
        if hit:
            kill_libvirtd(lab, "hv1")
        run.wait()
    restart(lab, "hv1")
    time.sleep(1)
    return hit and lab.domain_state("hv1", guest.name) == "paused" and lab.domain_state("hv2", guest.name)


def test_a_source_paused_after_the_send_is_never_resumed_once_the_destination_ran(lab):
    reached = None
    for _ in range(ATTEMPTS):
        guest = Guest(lab, "rc-" + uuid.uuid4().hex[:8], "hv1")
        try:
            dest_state = interrupt_between_finish_and_confirm(lab, guest)
            if dest_state in ("running", "paused"):
                reached = guest
                break
        finally:
            if reached is None:
                guest.remove()
    assert reached is not None, "the kill never landed between Finish and Confirm in {} runs".format(ATTEMPTS)
    guest = reached
    try:
        # the guest runs on hv2 (or was left paused there) and then stops there: a crash
        lab.virsh("hv2", "destroy", guest.name)
        assert lab.domain_state("hv2", guest.name) == "shut off"  # PERSIST_DEST kept its definition
        with EventObserver(lab, ("hv1", "hv2"), [guest.name]) as observer:
            again = Run(lab, "hv1", migrate_args(guest)).wait()
            observer.settle()
            resumed_on_hv1 = [r for r in observer.events(guest.name, host="hv1") if r.get("event") == "resumed"]
        assert again is not None and again.get("failed"), again
        assert again.get("changed") is False, again
        msg = again["msg"]
        assert msg.startswith("reconcile: ") and "may have run the guest after the send" in msg, msg
        assert "runs nowhere" in msg and "Nothing was changed" in msg, msg
        assert not resumed_on_hv1, resumed_on_hv1
        assert lab.domain_state("hv1", guest.name) == "paused"
        assert lab.domain_state("hv2", guest.name) == "shut off"
        found = [c for c in again["lock_checkpoints"] if c["name"] == "reconcile/found"]
        assert found and found[0]["ok"] is False and "hv2" in found[0]["check"]
    finally:
        guest.remove()
