"""Verified handoff and lease-checked start against libvirt's own, side by side.

- migrate: A is `virsh migrate --live --p2p` in an ansible.builtin.command task (libvirt's own handoff,
  nothing verified); B is lockstep.virt.migrate (verified lease handoff) on the same guest. Each round moves
  the guest A hv1->hv2, B hv2->hv1, B hv1->hv2, A hv2->hv1: both contenders in both directions, neither
  always first. For each move: the task's wall time (the controller's ansible-playbook run) and the
  guest-visible pause, measured by the event observer on both hosts (tests/integration/observe.py: libvirt's
  lifecycle events, one clock for both hosts) from the source's `suspended` to the destination's `resumed`.
  Goals for B against A: pause at most 25 ms longer, wall time at most 1.15x (medians).
- start: A is lockstep.virt.domain with `lock.acquire: libvirt` (one call, probed afterwards);
  B is `lock.acquire: after_create` (created paused, resumed, leases probed).

Runs on either lock manager of the lab (its results are kept per lock manager, see run.py): on lockd the guest
is defined from a spec with a VM lease in virtlockd's lockspace; on sanlock from XML with libvirt's automatic
disk lease and an explicit ``<lease>`` in the lab's sanlock lockspace ``lockstep_vm`` (its lease area made
with ``sanlock direct init``).
"""

import hashlib
import os
import statistics
import time

from benchlib import ok, summary, timed
from labkit import tiny_domain_xml
from migrate_helpers import SANLOCK_VM_LOCKSPACE, sanlock_lease_xml
from observe import EventObserver

NAME = "handoff"
LOCK_MANAGERS = ("lockd", "sanlock")
GUEST = "bench1"
CONTENDERS = ("virsh migrate", "lockstep.virt.migrate")  # baseline first
PAUSE_GOAL_MS = 25.0  # B's pause at most this much longer than A's
WALL_GOAL = 1.15  # B's wall time at most this many times A's


def spec(lab):
    return {
        "type": "qemu",
        "memory": 32,
        "boot": ["hd"],
        "disks": [{"path": os.path.join(lab.images_dir, GUEST + ".qcow2"), "format": "qcow2", "cache": "none"}],
        "lease": {},
    }


def vm_lease_file(lab):
    return os.path.join(lab.sanlock["vm_lease_dir"], GUEST + "-lease")


def definition(lab):
    """The domain module's arguments that define the guest: a spec on lockd; on sanlock its XML (the spec's VM
    lease is virtlockd's: a file in file_lockspace_dir), with the lease area of its ``<lease>`` made here."""
    if lab.lock_manager != "sanlock":
        return {"spec": spec(lab)}
    path = vm_lease_file(lab)
    with open(path, "wb") as fh:
        fh.truncate(1024 * 1024)
    lab.exec(
        lab.hosts[0],
        "sanlock",
        "direct",
        "init",
        "-r",
        "{}:{}:{}:0".format(SANLOCK_VM_LOCKSPACE, GUEST + "-lease", path),
    )
    xml = tiny_domain_xml(GUEST, disk=os.path.join(lab.images_dir, GUEST + ".qcow2"))
    return {"xml": xml.replace("<devices>", "<devices>" + sanlock_lease_xml(GUEST + "-lease", path), 1)}


def move(lab, method, src, dest):
    uri = "qemu+ssh://{}/system".format(dest)
    if method == "lockstep.virt.migrate":
        args = {"name": GUEST, "dest_uri": uri, "unsafe": True}
        seconds, result = timed(lab.module, src, "lockstep.virt.migrate", args)
    else:
        cmd = "virsh migrate --live --p2p --unsafe --persistent --undefinesource {} {}".format(GUEST, uri)
        seconds, result = timed(lab.module, src, "ansible.builtin.command", {"cmd": cmd})
    ok(result, method)
    if lab.domain_state(dest, GUEST) != "running":
        raise SystemExit("{}: {} is not running on {}".format(method, GUEST, dest))
    return seconds, result


def bench_migrate(lab, rounds):
    hv1, hv2 = lab.hosts[:2]
    ok(lab.module(hv1, "lockstep.virt.domain", dict({"name": GUEST, "state": "running"}, **definition(lab))), "start")
    a, b = CONTENDERS
    samples = dict((m, []) for m in CONTENDERS)  # wall s
    pauses = dict((m, []) for m in CONTENDERS)  # ms, None where an event is missing
    extra = {"lease_gap_ms": [], "downtime_ms": []}  # what lockstep.virt.migrate reports about itself
    moves, round_timeline = [], []
    where = hv1
    with EventObserver(lab, [hv1, hv2], [GUEST]) as observer:
        for _round in range(rounds):
            round_start = time.monotonic()
            for method in (a, b, b, a):
                dest = hv2 if where == hv1 else hv1
                since = time.monotonic()
                seconds, result = move(lab, method, where, dest)
                observer.settle(quiet=0.2)
                pause = observer.pause_ms(GUEST, where, dest, since=since)
                samples[method].append(seconds)
                pauses[method].append(None if pause is None else round(pause, 1))
                moves.append(
                    {"method": method, "from": where, "to": dest, "wall_s": round(seconds, 3), "pause_ms": pause}
                )
                if method == b:
                    extra["lease_gap_ms"].append(result.get("lease_gap_ms"))
                    extra["downtime_ms"].append(result.get("downtime_ms"))
                where = dest
            round_timeline = observer.timeline(GUEST, since=round_start, origin=round_start)
        overlaps = observer.overlaps(GUEST)
    return samples, pauses, extra, moves, round_timeline, overlaps


def bench_start(lab, rounds):
    host = lab.hosts[0]
    samples = {"acquire: libvirt": [], "acquire: after_create": []}  # baseline first
    for _round in range(rounds):
        for method in samples:
            ok(lab.module(host, "lockstep.virt.domain", {"name": GUEST, "state": "destroyed"}), "destroy")
            args = {"name": GUEST, "state": "running", "lock": {"acquire": method.split(": ")[1]}}
            seconds, result = timed(lab.module, host, "lockstep.virt.domain", args)
            ok(result, method)
            samples[method].append(seconds)
    return samples


def _stats(values):
    got = [v for v in values if v is not None]
    if not got:
        return {"n": 0, "missing": len(values)}
    return {
        "n": len(got),
        "missing": len(values) - len(got),
        "median": round(statistics.median(got), 3),
        "min": round(min(got), 3),
        "max": round(max(got), 3),
    }


def _goal(ok_, text):
    return "{}: {}".format(text, "met" if ok_ else "missed")


def migrate_markdown(report):
    a, b = CONTENDERS
    lines = [
        "Guest-visible pause (the source's `suspended` to the destination's `resumed`, libvirt's lifecycle events "
        "on both hosts) and the task's wall time, per move; each round moves the guest A hv1->hv2, B hv2->hv1, "
        "B hv1->hv2, A hv2->hv1.",
        "",
        "| contender | moves | pause median ms | pause min-max ms | wall median s | wall min-max s |",
        "| --- | ---: | ---: | --- | ---: | --- |",
    ]
    for m in CONTENDERS:
        p, w = report["pause_ms"][m], report["wall_s"][m]
        pause = ("{:.1f}".format(p["median"]), "{:.1f}-{:.1f}".format(p["min"], p["max"])) if p["n"] else ("-", "-")
        if p.get("missing"):
            pause = (pause[0], pause[1] + " ({} without both events)".format(p["missing"]))
        lines.append(
            "| {} | {} | {} | {} | {:.2f} | {:.2f}-{:.2f} |".format(
                m, w["n"], pause[0], pause[1], w["median"], w["min"], w["max"]
            )
        )
    lines.append("")
    diff = report.get("pause_diff_ms")
    if diff is None:
        lines.append("- pause B - A: not measured (an event was missing in every move of one contender)")
    else:
        lines.append(
            "- pause B - A (medians): {:+.1f} ms ({})".format(
                diff, _goal(diff <= PAUSE_GOAL_MS, "goal <= +{:.0f} ms".format(PAUSE_GOAL_MS))
            )
        )
    ratio = report["wall_ratio_b_over_a"]
    lines.append("- wall B / A (medians): {:.3f}x ({})".format(ratio, _goal(ratio <= WALL_GOAL, "goal <= 1.15x")))
    own = [d for d in report["downtime_ms"] if d is not None]
    if own:
        lines.append("- {}'s own `downtime_ms` (median): {} ms".format(b, statistics.median(own)))
    gaps = [g for g in report["lease_gap_ms"] if g is not None]
    if gaps:
        lines.append("- {}'s lease gap (median): {} ms".format(b, statistics.median(gaps)))
    lines.append(
        "- two running copies at one instant (by the events): {}".format(
            "none"
            if not report["overlaps"]
            else "; ".join(
                "{} for {}".format("+".join(h), "?" if t1 is None else "{:.1f} ms".format((t1 - t0) * 1000))
                for t0, t1, h in report["overlaps"]
            )
        )
    )
    if report["timeline"]:
        lines += ["", "Events of the last round (ms from its start):", "", "```"] + report["timeline"] + ["```"]
    return lines


def run(lab, rounds):
    lab.cleanup_domain(GUEST)
    lab.new_disk(GUEST)
    try:
        samples, pauses, extra, moves, round_timeline, overlaps = bench_migrate(lab, rounds)
        lab.cleanup_domain(GUEST)
        args = dict({"name": GUEST, "state": "present"}, **definition(lab))
        ok(lab.module(lab.hosts[0], "lockstep.virt.domain", args), "define")
        start_samples = bench_start(lab, rounds)
    finally:
        lab.cleanup_domain(GUEST)
        os.unlink(os.path.join(lab.images_dir, GUEST + ".qcow2"))
        if lab.lock_manager == "sanlock":
            disk_lease = hashlib.md5(os.path.join(lab.images_dir, GUEST + ".qcow2").encode()).hexdigest()
            for path in (vm_lease_file(lab), os.path.join(lab.sanlock["disk_lease_dir"], disk_lease)):
                if os.path.exists(path):
                    os.unlink(path)
    a, b = CONTENDERS
    migrate = dict(summary(samples), **extra)
    migrate["wall_s"] = dict((m, _stats(samples[m])) for m in CONTENDERS)
    migrate["pause_ms"] = dict((m, _stats(pauses[m])) for m in CONTENDERS)
    migrate["pause_samples_ms"] = pauses
    pa, pb = migrate["pause_ms"][a], migrate["pause_ms"][b]
    migrate["pause_diff_ms"] = round(pb["median"] - pa["median"], 1) if pa["n"] and pb["n"] else None
    migrate["wall_ratio_b_over_a"] = migrate["ratio_b_over_a"]
    migrate["goals"] = {"pause_diff_ms": PAUSE_GOAL_MS, "wall_ratio": WALL_GOAL}
    migrate["moves"] = moves
    migrate["overlaps"] = overlaps
    migrate["timeline"] = round_timeline
    report = {"lock_manager": lab.lock_manager, "migrate": migrate, "start": summary(start_samples)}
    return report, markdown(report)


def markdown(report):
    """The suite's section of benchmarks/results/latest.md, from its report (benchmarks/results/handoff.json)."""
    lines = ["Lock manager: {}.".format(report.get("lock_manager", "lockd")), ""]
    lines += ["| pair | A | median s | B | median s | B/A |", "|---|---|---|---|---|---|"]
    for pair in ("migrate", "start"):
        r = report[pair]
        lines.append(
            "| {} | {} | {:.2f} | {} | {:.2f} | {:.3f} |".format(
                pair, r["a"], r["median_a_s"], r["b"], r["median_b_s"], r["ratio_b_over_a"]
            )
        )
    lines.append("")
    lines += migrate_markdown(report["migrate"])
    return "\n".join(lines)
