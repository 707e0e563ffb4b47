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

One more cell judges the same invariant by what the guest writes (``stale copy (disk counter)``): a Linux guest
writes an incrementing counter to a second, raw disk on the shared storage every 100 ms; the copy that runs
after the fault runs a second more and stops, the counter on the disk reads N, and after the re-run the disk
never holds less than N, and a copy that runs then goes on counting from there. A copy resumed from memory
older than the disk would write a number below N.
"""

import errno
import mmap
import os
import time
import uuid

import pytest
from harness import Run, kill_libvirtd, kill_pids, migrate_args, processes_in, restart, wait_for
from migrate_helpers import Guest, LinuxGuest, auto_disk_lease
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


def check_no_stale_resume(lab, guest, states, outcome, stopped=None):
    """The guest stops wherever it runs now (a crash): any copy still paused is older than its disks, and the
    re-run must resume nothing and refuse. ``stopped()``, if given, is called once no copy runs, before the
    re-run."""
    running = [h for h, s in states.items() if s == "running"]
    for host in running:
        lab.virsh(host, "destroy", guest.name)
    if stopped is not None:
        stopped()
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


def check_only_copy(lab, guest, states, outcome, stopped=None):
    """The fault left the guest paused on one host and running nowhere: the re-run either finishes the
    handoff with that copy (it then runs there alone, its leases held by that host) or refuses, changing
    nothing and saying that the guest runs nowhere. ``stopped()``, if given, is called before the re-run."""
    (paused,) = [h for h, s in states.items() if s == "paused"]
    if stopped is not None:
        stopped()
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


def stale_copy_cell(lab, fault, outcome, new_guest, guests, ran=None, stopped=None):
    """One stale-copy cell: a fresh guest (``new_guest()``, on hv1) migrated with ``fault`` injected between
    Finish and Confirm, up to ``ATTEMPTS`` guests until one is left paused beside a running copy (each guest
    removed before the next; ``guests`` holds the last one for the caller to remove), then the re-run judged.
    ``ran(states)`` is called once the fault is over, before any copy is stopped; ``stopped()`` once no copy
    runs, just before the re-run. Returns the guest and the hosts' states the fault left."""
    attempt = 0
    while attempt < ATTEMPTS:
        attempt += 1
        if guests:
            guests.pop().remove()
        guests.append(new_guest())
        hit, first, states = inject_between_finish_and_confirm(lab, guests[-1], fault)
        if hit and stale_copy_left(states):
            break
    guest = guests[-1]
    outcome["injected"] = bool(hit)
    outcome["attempts"] = attempt
    outcome["states"] = states
    outcome["first"] = (first or {}).get("msg") or "ok"
    assert hit, "hv2 never reported the guest arrived"
    if not stale_copy_left(states):
        outcome["notes"].append(
            "the fault left no paused copy beside a running one in {} attempts: {}".format(ATTEMPTS, states)
        )
    if ran is not None:
        ran(states)
    if list(states.values()).count("paused") == 1 and "running" not in states.values():
        # the only copy is paused (the source finished, or a restarted daemon kept it): nothing ran since
        # it arrived, so it is the newest; a re-run may finish the handoff with it, or refuse with why
        check_only_copy(lab, guest, states, outcome, stopped=stopped)
    else:
        check_no_stale_resume(lab, guest, states, outcome, stopped=stopped)
    return guest, states


def finish_outcome(matrix, outcome, guests):
    outcome["survived"] = outcome["injected"] and not outcome["problems"]
    outcome["lost"] = outcome.get("lost", False)
    matrix.append(outcome)
    for guest in guests:
        guest.remove()


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_paused_copy_is_never_resumed_once_the_guest_ran_elsewhere(lab, matrix, fault):
    outcome = {"fault": "stale copy: " + fault, "phase": "finish", "injected": False, "problems": [], "notes": []}
    guests = []
    try:
        stale_copy_cell(lab, fault, outcome, lambda: Guest(lab, "rc-" + uuid.uuid4().hex[:8], "hv1"), guests)
    finally:
        finish_outcome(matrix, outcome, guests)
    assert not outcome["problems"], outcome


# --------------------------------------------------------------------------- the same, judged by the guest's disk
# The fault most likely to leave a paused copy beside a running one (README, fault matrix).
COUNTER_FAULT = "source libvirtd killed"
COUNTER_MAGIC = b"lockstep-counter "
COUNTER_BLOCK = 4096
# In the guest: an incrementing number written to the first block of /dev/vdb every 100 ms, each write on the
# disk before the next (O_DIRECT from a page-aligned buffer, O_SYNC).
COUNTER_LOOP = r"""
import mmap, os, time
fd = os.open("/dev/vdb", os.O_WRONLY | os.O_SYNC | os.O_DIRECT)
block = mmap.mmap(-1, 4096)
n = 0
while True:
    n += 1
    block[:32] = b"lockstep-counter %014d\n" % n
    os.pwrite(fd, block, 0)
    time.sleep(0.1)
"""


def read_counter(path):
    """The counter in the first block of ``path`` as the storage holds it (read past the host's page cache
    with O_DIRECT where the file system has it), or None before the guest's first write."""
    block = mmap.mmap(-1, COUNTER_BLOCK)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [block], 0)
    finally:
        os.close(fd)
    data = bytes(block[:32])
    if not data.startswith(COUNTER_MAGIC):
        return None
    return int(data[len(COUNTER_MAGIC) :])


class CounterGuest(LinuxGuest):
    """The Linux guest with a second disk: a 1 MiB raw file on the shared storage (``/dev/vdb`` in the guest,
    leased like the first by the lock manager's automatic disk lease), to which a loop in the guest writes an
    incrementing counter every 100 ms. A copy of the guest resumed from older memory writes a smaller number
    than the disk holds."""

    def __init__(self, lab, name, host):
        self.counter_disk = os.path.join(lab.images_dir, name + "-counter.raw")
        self.counter_lease = auto_disk_lease(lab, self.counter_disk)
        with open(self.counter_disk, "wb") as fh:
            fh.truncate(1 << 20)
        self.lab, self.name = lab, name
        try:
            super().__init__(lab, name, host)
            self.seen = self.start_counter()
        except BaseException:
            self.remove()
            raise

    def domain_xml(self):
        disk = (
            "<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>"
            "<source file='{}'/><target dev='vdb' bus='virtio'/></disk>".format(self.counter_disk)
        )
        return super().domain_xml().replace("</devices>", "  " + disk + "\n  </devices>", 1)

    def counter(self):
        return read_counter(self.counter_disk)

    def start_counter(self):
        """Start the loop (detached from the agent, in a session of its own: the image's busybox has no nohup)
        and see the number grow
        in the file on the shared storage; returns two readings half a second apart."""
        pid = self.spawn(["/bin/sh", "-c", 'setsid python3 -c "$0" </dev/null >/dev/null 2>&1 &', COUNTER_LOOP])
        assert self.exec_status(pid) == 0, "the counter loop did not start"
        assert wait_for(lambda: self.counter() is not None, None, timeout=30), "the guest wrote no counter"
        first = self.counter()
        time.sleep(0.5)
        second = self.counter()
        assert second > first, "the counter on the disk does not grow: {} then {}".format(first, second)
        return [first, second]

    def remove(self):
        if hasattr(self, "leases"):
            super().remove()
        else:
            self.lab.cleanup_domain(self.name)
        paths = [self.counter_disk, self.counter_lease]
        if hasattr(self, "disk"):
            paths.append(auto_disk_lease(self.lab, self.disk))
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)


def test_a_stale_copy_never_writes_an_older_counter(lab, matrix):
    """The stale-copy cell for ``COUNTER_FAULT``, judged by what the guest writes to its disk beside the
    lifecycle events: the copy that runs after the fault runs a second, then stops (destroyed); the counter
    on the disk then reads N. After the same task runs again (and 2 s more), the counter is at least N, and
    a copy that runs then goes on counting from there: a copy resumed from memory older than the disk would
    write a number below N."""
    outcome = {
        "fault": "stale copy (disk counter): " + COUNTER_FAULT,
        "phase": "finish",
        "injected": False,
        "problems": [],
        "notes": [],
    }
    guests, counts = [], {}
    started = time.monotonic()

    def ran(states):
        running = [h for h, s in states.items() if s == "running"]
        counts["ran on"] = running
        before = guests[-1].counter()
        time.sleep(1.0)
        counts["while it ran"] = [before, guests[-1].counter()]
        if running and not counts["while it ran"][1] > before:
            outcome["problems"].append(
                "the copy running on {} wrote no counter in 1 s: {}".format(running, counts["while it ran"])
            )

    def stopped():
        counts["stopped"] = guests[-1].counter()

    try:
        guest, _states = stale_copy_cell(
            lab,
            COUNTER_FAULT,
            outcome,
            lambda: CounterGuest(lab, "rcc-" + uuid.uuid4().hex[:8], "hv1"),
            guests,
            ran=ran,
            stopped=stopped,
        )
        counts["before the migration"] = guest.seen
        time.sleep(2)
        n = counts["stopped"]
        after = dict((h, lab.domain_state(h, guest.name)) for h in ("hv1", "hv2"))
        running = [h for h, s in after.items() if s == "running"]
        counts["after the re-run"] = [guest.counter()]
        if running:
            time.sleep(1)
            counts["after the re-run"].append(guest.counter())
        now = counts["after the re-run"]
        if min(now) < n:
            outcome["problems"].append(
                "a copy older than the disk wrote to it: the counter read {} once the guest stopped, {} after the "
                "re-run".format(n, now)
            )
            outcome["lost"] = True
        elif running and not now[1] > now[0]:
            outcome["problems"].append(
                "the copy running on {} after the re-run writes no counter: {}".format(running, now)
            )
        elif not running and now[0] != n:
            outcome["problems"].append(
                "the disk was written after the guest stopped though no copy runs: {} -> {}".format(n, now[0])
            )
        outcome["counter"] = counts
        outcome["notes"].append(
            "counter {} before the migration; ran on {} after the fault ({} -> {} in 1 s); {} once stopped; "
            "{} after the re-run ({}); {} attempt(s), {:.0f} s".format(
                counts["before the migration"],
                counts["ran on"] or "no host",
                counts["while it ran"][0],
                counts["while it ran"][1],
                n,
                now,
                "runs on {}".format(running[0]) if running else "runs nowhere",
                outcome["attempts"],
                time.monotonic() - started,
            )
        )
    finally:
        outcome["counter"] = counts
        finish_outcome(matrix, outcome, guests)
    assert not outcome["problems"], outcome
