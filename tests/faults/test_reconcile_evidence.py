"""Interleavings where "nobody holds the lease" is no evidence that a paused copy is current.

Each cell migrates a guest hv1 -> hv2 and injects its fault the moment hv2 reports the guest fully arrived
(SUSPENDED/paused: the end of libvirt's Finish), between Finish and the source's Confirm:

- the source's libvirtd SIGKILLed (then restarted): the source stays paused after the send;
- the source's connection to the destination reset (the ssh tunnel its libvirtd drives the migration
  through is killed): the Finish reply is lost, so libvirt's Confirm runs cancelled and resumes the source,
  while the destination may keep a whole paused copy;
- the destination's libvirtd SIGKILLed (then restarted).

Then the guest stops wherever it ran last (a crash: ``virsh destroy``) and the same task runs again. Any
copy still paused elsewhere is older than the disks now, so the invariant is: the re-run resumes nothing
(no RESUMED or STARTED event on any host while it runs) and never reports the guest running; it refuses
with what it saw or finds nothing to move.
"""

import os
import time
import uuid

import pytest
from harness import Run, kill_libvirtd, kill_pids, migrate_args, processes_in, restart, wait_for
from migrate_helpers import Guest
from observe import EventObserver

ATTEMPTS = 3  # the fault must land in the ~200 ms between Finish and Confirm


def finished_receiving(observer, name):
    return any(r.get("event") == "suspended" and r.get("detail") == "paused" for r in observer.events(name, host="hv2"))


def source_tunnel(lab):
    """The ssh client hv1's libvirtd runs to reach hv2's libvirtd (qemu+ssh://hv2) during the migration."""
    return processes_in(lab, "hv1", lambda a: os.path.basename(a[0]) == "ssh" and any("hv2" in x for x in a))


FAULTS = {
    "source libvirtd killed": lambda lab: kill_libvirtd(lab, "hv1"),
    "source connection reset": lambda lab: kill_pids(source_tunnel(lab)),
    "dest libvirtd killed": lambda lab: kill_libvirtd(lab, "hv2"),
}
RESTART = {"source libvirtd killed": "hv1", "dest libvirtd killed": "hv2"}


def last_ran(observer, name):
    """The host whose last event says the guest runs there, or None."""
    host = None
    for r in observer.events(name):
        if r.get("event") in ("resumed",) or (r.get("event") == "started" and r.get("detail") != "migrated"):
            host = r["host"]
        elif r.get("event") in ("suspended", "stopped", "crashed") and r["host"] == host:
            host = None
    return host


def inject_between_finish_and_confirm(lab, guest, fault):
    with EventObserver(lab, ("hv1", "hv2"), [guest.name]) as observer:
        run = Run(lab, "hv1", migrate_args(guest))
        hit = wait_for(lambda: finished_receiving(observer, guest.name), run.alive, timeout=90)
        if hit:
            FAULTS[fault](lab)
        first = run.wait()
        if fault in RESTART:
            restart(lab, RESTART[fault])
        time.sleep(1)
        observer.settle()
    states = dict((h, lab.domain_state(h, guest.name)) for h in ("hv1", "hv2"))
    return hit, first, states


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_paused_copy_is_never_resumed_once_the_guest_ran_elsewhere(lab, matrix, fault):
    outcome = {"fault": "stale copy: " + fault, "phase": "finish", "injected": False, "problems": [], "notes": []}
    guest = None
    try:
        for _attempt in range(ATTEMPTS):
            if guest is not None:
                guest.remove()
            guest = Guest(lab, "rc-" + uuid.uuid4().hex[:8], "hv1")
            hit, first, states = inject_between_finish_and_confirm(lab, guest, fault)
            if hit and "paused" in states.values():
                break
        outcome["injected"] = bool(hit)
        outcome["states"] = states
        outcome["first"] = (first or {}).get("msg") or "ok"
        assert hit, "hv2 never reported the guest arrived"
        if "paused" not in states.values():
            outcome["notes"].append("the fault left no paused copy in {} attempts: {}".format(ATTEMPTS, states))
        # the guest stops wherever it runs now: any copy still paused is older than its disks
        running = [h for h, s in states.items() if s == "running"]
        for host in running:
            lab.virsh(host, "destroy", guest.name)
        with EventObserver(lab, ("hv1", "hv2"), [guest.name]) as observer:
            again = Run(lab, "hv1", migrate_args(guest)).wait()
            observer.settle()
            woke = [
                r
                for r in observer.events(guest.name)
                if r.get("event") == "resumed" or (r.get("event") == "started" and r.get("detail") != "migrated")
            ]
        after = dict((h, lab.domain_state(h, guest.name)) for h in ("hv1", "hv2"))
        outcome["rerun"] = (again or {}).get("msg") or "ok"
        if woke:
            outcome["problems"].append("the re-run resumed a stale copy: {}".format(woke))
            outcome["lost"] = True
        if again is None or not again.get("failed") or again.get("state") == "running":
            outcome["problems"].append("the re-run did not refuse: {}".format(again))
        if "running" in after.values():
            outcome["problems"].append("a copy runs after the re-run: {}".format(after))
        for host, state in states.items():
            if state == "paused" and after[host] != "paused":
                outcome["problems"].append("the paused copy on {} was changed: {}".format(host, after[host]))
        if again is not None and again.get("failed") and "paused" in states.values():
            if again.get("changed"):
                outcome["problems"].append("the refusing re-run reports changed")
            if "runs nowhere" not in again["msg"]:
                outcome["problems"].append("the re-run does not say the guest runs nowhere: " + again["msg"])
    finally:
        outcome["survived"] = outcome["injected"] and not outcome["problems"]
        outcome["lost"] = outcome.get("lost", False)
        matrix.append(outcome)
        if guest is not None:
            guest.remove()
    assert not outcome["problems"], outcome
