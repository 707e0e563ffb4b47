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

A fault that leaves no copy running beside the paused one is tried again (``ATTEMPTS`` in all). When the last
attempt leaves the only copy paused and none running (the source finished; nothing ran since the copy
arrived), that copy is the newest: the re-run either finishes the handoff with it (it then runs there alone,
its leases held by that host) or refuses, changing nothing, saying that the guest runs nowhere.
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


def stale_copy_left(states):
    """A copy paused on one host while the guest runs on the other: once the running one stops, the paused
    one is older than the disks."""
    return sorted(s for s in states.values() if s) == ["paused", "running"]


def check_no_stale_resume(lab, guest, states, outcome):
    """The guest stops wherever it runs now (a crash): any copy still paused is older than its disks, and the
    re-run must resume nothing and refuse."""
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


def check_only_copy(lab, guest, states, outcome):
    """The fault left the guest paused on one host and running nowhere: the re-run either finishes the
    handoff with that copy (it then runs there alone, its leases held by that host) or refuses, changing
    nothing and saying that the guest runs nowhere."""
    (paused,) = [h for h, s in states.items() if s == "paused"]
    with EventObserver(lab, ("hv1", "hv2"), [guest.name]) as observer:
        again = Run(lab, "hv1", migrate_args(guest)).wait()
        observer.settle()
        overlaps = observer.overlaps(guest.name)
    after = dict((h, lab.domain_state(h, guest.name)) for h in ("hv1", "hv2"))
    outcome["rerun"] = (again or {}).get("msg") or "ok"
    outcome["notes"].append("the fault left the only copy paused on {} (nothing ran since): {}".format(paused, states))
    if overlaps:
        outcome["problems"].append("two running copies during the re-run: {}".format(overlaps))
    if again is None:
        outcome["problems"].append("the re-run ended without a result")
    elif not again.get("failed"):
        if after[paused] != "running" or "running" in [s for h, s in after.items() if h != paused]:
            outcome["problems"].append("the re-run reported ok, then {}".format(after))
        want = lab.lease_holder_of(paused)
        if guest.holders() != [want, want]:
            outcome["problems"].append("leases {} while the guest runs on {}".format(guest.holders(), paused))
        outcome["notes"].append(
            "the re-run finished the handoff with it ({})".format(
                again.get("lock_checkpoints") and [c["name"] for c in again["lock_checkpoints"]]
            )
        )
    else:
        if again.get("changed") or after != states:
            outcome["problems"].append("the refusing re-run changed something: {} -> {}".format(states, after))
        if "runs nowhere" not in again["msg"]:
            outcome["problems"].append("the re-run does not say the guest runs nowhere: " + again["msg"])


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
            if hit and stale_copy_left(states):
                break
        outcome["injected"] = bool(hit)
        outcome["states"] = states
        outcome["first"] = (first or {}).get("msg") or "ok"
        assert hit, "hv2 never reported the guest arrived"
        if not stale_copy_left(states):
            outcome["notes"].append(
                "the fault left no paused copy beside a running one in {} attempts: {}".format(ATTEMPTS, states)
            )
        if list(states.values()).count("paused") == 1 and "running" not in states.values():
            # the only copy is paused (the source finished, or a restarted daemon kept it): nothing ran since
            # it arrived, so it is the newest; a re-run may finish the handoff with it, or refuse with why
            check_only_copy(lab, guest, states, outcome)
        else:
            check_no_stale_resume(lab, guest, states, outcome)
    finally:
        outcome["survived"] = outcome["injected"] and not outcome["problems"]
        outcome["lost"] = outcome.get("lost", False)
        matrix.append(outcome)
        if guest is not None:
            guest.remove()
    assert not outcome["problems"], outcome
