"""The event observer (tests/lab/observer.py, tests/integration/observe.py) on the lab: it sees a plain
libvirt live migration's pause and no overlap, it reports two guests of one name running on two hosts at
once as an overlap, it follows libvirtd being restarted, and every host's clock is the controller's."""

import os
import subprocess
import time

from labkit import LAB, define_and_start, lab_state, tiny_domain_xml
from migrate_helpers import Guest
from observe import EventObserver


def test_hosts_share_the_controllers_monotonic_clock(lab):
    mine = os.stat("/proc/self/ns/time").st_ino
    for host in lab.hosts:
        # the hosts are entered through their anchor process: its time namespace is theirs
        assert os.stat("/proc/{}/ns/time".format(lab.state["hosts"][host]["anchor"])).st_ino == mine
        before = time.monotonic()
        res = lab.exec(host, "/usr/bin/python3", "-c", "import time; print(repr(time.monotonic()))")
        after = time.monotonic()
        assert before <= float(res.stdout) <= after, (host, before, res.stdout, after)


def test_plain_live_migration_pause_and_no_overlap(lab, guest_name):
    guest = Guest(lab, guest_name, "hv1")
    try:
        with EventObserver(lab, ["hv1", "hv2"], [guest.name]) as observer:
            reads = observer.records("hv1") + observer.records("hv2")
            initial = dict((r["host"], r["state"]) for r in reads if r["kind"] == "initial")
            assert initial == {"hv1": "running", "hv2": None}
            lab.virsh(
                "hv1",
                "migrate",
                "--live",
                "--p2p",
                "--unsafe",
                "--persistent",
                "--undefinesource",
                guest.name,
                "qemu+ssh://hv2/system",
            )
        timeline = "\n".join(observer.timeline(guest.name))
        seen = [(e["host"], e["event"], e["detail"]) for e in observer.events(guest.name)]
        assert ("hv1", "suspended", "migrated") in seen, timeline
        assert ("hv2", "resumed", "migrated") in seen, timeline
        assert ("hv1", "stopped", "migrated") in seen, timeline
        assert observer.overlaps(guest.name) == [], timeline
        pause = observer.pause_ms(guest.name, "hv1", "hv2")
        assert pause is not None and pause >= 0, timeline
        intervals = observer.running_intervals(guest.name)
        assert len(intervals["hv1"]) == 1 and intervals["hv1"][0][1] is not None, timeline
        assert len(intervals["hv2"]) == 1 and intervals["hv2"][0][1] is None, timeline
        assert lab.domain_state("hv2", guest.name) == "running"
        print("pause {:.1f} ms\n{}".format(pause, timeline))
    finally:
        guest.remove()


def test_two_guests_of_one_name_at_once_are_an_overlap(lab, guest_name):
    # two distinct guests that share only the name: no disk, no lease, nothing stops both from running
    with EventObserver(lab, ["hv1", "hv2"], [guest_name]) as observer:
        for host in ("hv1", "hv2"):
            res = define_and_start(lab, host, tiny_domain_xml(guest_name))
            assert res.returncode == 0, res.stderr
        time.sleep(0.5)
        lab.virsh("hv1", "destroy", guest_name)
        lab.virsh("hv2", "destroy", guest_name)
    timeline = "\n".join(observer.timeline(guest_name))
    overlaps = observer.overlaps(guest_name)
    assert len(overlaps) == 1, timeline
    t_from, t_to, hosts = overlaps[0]
    assert hosts == ("hv1", "hv2"), timeline
    assert t_to is not None and t_to - t_from >= 0.5, timeline
    uuids = set(e["uuid"] for e in observer.events(guest_name))
    assert len(uuids) == 2, uuids


def test_observer_follows_a_libvirtd_restart(lab, guest_name):
    res = define_and_start(lab, "hv2", tiny_domain_xml(guest_name))
    assert res.returncode == 0, res.stderr
    with EventObserver(lab, ["hv2"], [guest_name]) as observer:
        subprocess.run([LAB, "restart", "hv2", "libvirtd"], check=True, capture_output=True, timeout=120)
        lab.state = lab_state()  # the new daemon's pid
        deadline = time.monotonic() + 30
        while not any(r["kind"] == "reconnected" for r in observer.records("hv2")):
            assert time.monotonic() < deadline, observer.records("hv2")
            time.sleep(0.1)
        lab.virsh("hv2", "destroy", guest_name)
    kinds = [r["kind"] for r in observer.records("hv2")]
    assert kinds.index("lost") < kinds.index("resync") < kinds.index("reconnected"), kinds
    resync = [r for r in observer.records("hv2") if r["kind"] == "resync"][0]
    assert resync["state"] == "running"
    # destroying it: QEMU reports a shutdown by the host, then libvirt the stop; nothing else happened to it
    events = [(e["event"], e["detail"]) for e in observer.events(guest_name)]
    assert events in ([("stopped", "destroyed")], [("shutdown", "host"), ("stopped", "destroyed")]), events
    gaps = observer.unobserved("hv2")
    assert len(gaps) == 1 and gaps[0][1] is not None
    # running before the loss and after the reconnect: certain on both sides, possible throughout
    assert len(observer.running_intervals(guest_name)["hv2"]) == 2
    assert len(observer.possible_intervals(guest_name)["hv2"]) == 1
