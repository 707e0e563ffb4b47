"""Benchmarks on the lab, side by side in one run, reported as ratios.

    python benchmarks/run.py [--rounds N]

Each pair runs the same work two ways, interleaved (A, B, A, B, ...) so that both see the
same machine load, through the same Ansible task machinery:

- migrate: A is `virsh migrate` in an ansible.builtin.command task (libvirt's own handoff,
  nothing verified); B is lockstep.virt.migrate (verified lease handoff, destination kept paused
  until the source released) on the same guest;
- start: A is lockstep.virt.domain with `lock.acquire: libvirt` (one call, probed afterwards);
  B is `lock.acquire: after_create` (created paused, resumed, leases probed).

Results go to benchmarks/results/<UTC time>.json; the table on stdout gives the medians and the
ratio B/A: what the explicit, verified lease handling costs. Needs the lab (make lab) and the venv (make venv).
"""

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from labkit import LAB, Lab  # noqa: E402

GUEST = "bench1"


def lab_from_status():
    import subprocess

    res = subprocess.run([LAB, "status", "--json"], capture_output=True, text=True, check=False)
    status = json.loads(res.stdout or "{}")
    if not status.get("up"):
        raise SystemExit("the lab is down: run `make lab` first")
    return Lab(status)


def timed(fn, *args):
    started = time.monotonic()
    result = fn(*args)
    return time.monotonic() - started, result


def ok(result, what):
    if result.get("failed"):
        raise SystemExit("{} failed: {}".format(what, result.get("msg")))
    return result


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


def summary(samples):
    (name_a, a), (name_b, b) = samples.items()
    med_a, med_b = statistics.median(a), statistics.median(b)
    return {
        "a": name_a,
        "b": name_b,
        "median_a_s": round(med_a, 3),
        "median_b_s": round(med_b, 3),
        "ratio_b_over_a": round(med_b / med_a, 3),
        "samples_s": {name_a: [round(x, 3) for x in a], name_b: [round(x, 3) for x in b]},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lab = lab_from_status()
    lab.cleanup_domain(GUEST)
    lab.new_disk(GUEST)
    try:
        migrate_samples, migrate_extra = bench_migrate(lab, args.rounds)
        lab.cleanup_domain(GUEST)
        ok(
            lab.module(lab.hosts[0], "lockstep.virt.domain", {"name": GUEST, "state": "present", "spec": spec(lab)}),
            "define",
        )
        start_samples = bench_start(lab, args.rounds)
    finally:
        lab.cleanup_domain(GUEST)
        os.unlink(os.path.join(lab.images_dir, GUEST + ".qcow2"))
    report = {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "accel": lab.status.get("accel"),
        "migrate": dict(summary(migrate_samples), **migrate_extra),
        "start": summary(start_samples),
    }
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", report["at"].replace(":", "") + ".json")
    with open(path, "w") as fh:
        json.dump(report, fh, indent=2)
    print("{:8} {:>24} {:>10} {:>24} {:>10} {:>8}".format("pair", "A", "median s", "B", "median s", "B/A"))
    for pair in ("migrate", "start"):
        r = report[pair]
        print(
            "{:8} {:>24} {:>10.2f} {:>24} {:>10.2f} {:>8.2f}".format(
                pair, r["a"], r["median_a_s"], r["b"], r["median_b_s"], r["ratio_b_over_a"]
            )
        )
    gaps = [g for g in migrate_extra["lease_gap_ms"] if g is not None]
    if gaps:
        print("lockstep.virt.migrate lease gap: median {} ms".format(statistics.median(gaps)))
    print("results: {}".format(os.path.relpath(path, REPO)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
