"""Verified handoff and lease-checked start against libvirt's own, side by side.

- migrate: A is `virsh migrate` in an ansible.builtin.command task (libvirt's own handoff,
  nothing verified); B is lockstep.virt.migrate (verified lease handoff) on the same guest;
- start: A is lockstep.virt.domain with `lock.acquire: libvirt` (one call, probed afterwards);
  B is `lock.acquire: after_create` (created paused, resumed, leases probed).
"""

import os
import statistics

from benchlib import ok, summary, timed

NAME = "handoff"
GUEST = "bench1"


def spec(lab):
    return {
        "type": "qemu",
        "memory": 32,
        "boot": ["hd"],
        "disks": [{"path": os.path.join(lab.images_dir, GUEST + ".qcow2"), "format": "qcow2", "cache": "none"}],
        "lease": {},
    }


def bench_migrate(lab, rounds):
    hv1, hv2 = lab.hosts[:2]
    ok(lab.module(hv1, "lockstep.virt.domain", {"name": GUEST, "state": "running", "spec": spec(lab)}), "start")
    where = hv1
    samples = {"virsh migrate": [], "lockstep.virt.migrate": []}  # baseline first
    extra = {"lease_gap_ms": [], "downtime_ms": []}
    for _round in range(rounds):
        for method in samples:
            dest = hv2 if where == hv1 else hv1
            uri = "qemu+ssh://{}/system".format(dest)
            if method == "lockstep.virt.migrate":
                args = {"name": GUEST, "dest_uri": uri, "unsafe": True}
                seconds, result = timed(lab.module, where, "lockstep.virt.migrate", args)
                ok(result, method)
                extra["lease_gap_ms"].append(result.get("lease_gap_ms"))
                extra["downtime_ms"].append(result.get("downtime_ms"))
            else:
                cmd = "virsh migrate --live --p2p --unsafe --persistent --undefinesource {} {}".format(GUEST, uri)
                seconds, result = timed(lab.module, where, "ansible.builtin.command", {"cmd": cmd})
                ok(result, method)
            if lab.domain_state(dest, GUEST) != "running":
                raise SystemExit("{}: {} is not running on {}".format(method, GUEST, dest))
            samples[method].append(seconds)
            where = dest
    return samples, extra


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


def run(lab, rounds):
    lab.cleanup_domain(GUEST)
    lab.new_disk(GUEST)
    try:
        migrate_samples, migrate_extra = bench_migrate(lab, rounds)
        lab.cleanup_domain(GUEST)
        ok(
            lab.module(lab.hosts[0], "lockstep.virt.domain", {"name": GUEST, "state": "present", "spec": spec(lab)}),
            "define",
        )
        start_samples = bench_start(lab, rounds)
    finally:
        lab.cleanup_domain(GUEST)
        os.unlink(os.path.join(lab.images_dir, GUEST + ".qcow2"))
    report = {"migrate": dict(summary(migrate_samples), **migrate_extra), "start": summary(start_samples)}
    lines = ["| pair | A | median s | B | median s | B/A |", "|---|---|---|---|---|---|"]
    for pair in ("migrate", "start"):
        r = report[pair]
        lines.append(
            "| {} | {} | {:.2f} | {} | {:.2f} | {:.2f} |".format(
                pair, r["a"], r["median_a_s"], r["b"], r["median_b_s"], r["ratio_b_over_a"]
            )
        )
    gaps = [g for g in migrate_extra["lease_gap_ms"] if g is not None]
    if gaps:
        lines.append("")
        lines.append("lockstep.virt.migrate lease gap: median {} ms".format(statistics.median(gaps)))
    return report, "\n".join(lines)
