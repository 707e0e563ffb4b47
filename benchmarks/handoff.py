"""Verified handoff and lease-checked start against libvirt's own, side by side.

- migrate: A is plain `virsh migrate --live --p2p` (libvirt's own handoff, nothing verified), B is
  lockstep.virt.migrate's engine (verified lease handoff), alternating on the same 32 MiB guest and
  both started on the source host itself, so that the wall times compare the calls and not Ansible.
  The guest-visible pause is measured by an independent lifecycle-event listener on each host (a small
  separate process with libvirt-python's event loop, read-only connection): source SUSPENDED ->
  destination RESUMED. Both hosts share the machine's clock.
- start: A is lockstep.virt.domain with `lock.acquire: libvirt` (one call, probed afterwards);
  B is `lock.acquire: after_create` (created paused, resumed, leases probed).
"""

import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time

from benchlib import LAB, REPO, ok, summary, timed

NAME = "handoff"
GUEST = "bench1"
EVENTS = {0: "DEFINED", 1: "UNDEFINED", 2: "STARTED", 3: "SUSPENDED", 4: "RESUMED", 5: "STOPPED"}

LISTENER = r"""
import json, sys, time
import libvirt
name = sys.argv[1]
libvirt.virEventRegisterDefaultImpl()
conn = libvirt.openReadOnly("qemu:///system")
def cb(_c, dom, event, detail, _o):
    if dom.name() == name:
        print(json.dumps({"ts": time.time(), "event": event, "detail": detail}), flush=True)
conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, cb, None)
print(json.dumps({"ready": True}), flush=True)
while True:
    libvirt.virEventRunDefaultImpl()
"""

# Runs on the source host: the plain call, or the module's engine (what the module's main() runs), timed
# there. Ansible's own library comes from the venv (pure Python), libvirt from the host.
RUNNER = r"""
import json, subprocess, sys, time
mode, name, dest, colls, site = sys.argv[1:6]
uri = "qemu+ssh://{}/system".format(dest)
out = {}
t0 = time.monotonic()
if mode == "plain":
    r = subprocess.run(["virsh", "-q", "-c", "qemu:///system", "migrate", "--live", "--p2p", "--unsafe",
                        "--persistent", "--undefinesource", name, uri], capture_output=True, text=True)
    out["ok"], out["msg"] = r.returncode == 0, r.stderr.strip()
else:
    sys.path.insert(0, colls)
    sys.path.append(site)
    from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.migration import MigrationManager
    from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration import MIGRATE_ARGUMENT_SPEC
    params = {k: v.get("default") for k, v in MIGRATE_ARGUMENT_SPEC.items()}
    params.update(name=name, dest_uri=uri, unsafe=True, uri=None,
                  lock={"release": "after_send", "verify": True, "acquire_timeout": 30})
    try:
        res = MigrationManager(params).run()
        out.update(ok=True, downtime_ms=res["downtime_ms"], lease_gap_ms=res["lease_gap_ms"],
                   checkpoints=[(c["name"], c["at"], c["source"], c["ok"]) for c in res["lock_checkpoints"]],
                   events=res.get("events"))
    except Exception as exc:
        out.update(ok=False, msg=str(exc))
out["wall_s"] = time.monotonic() - t0
print(json.dumps(out))
"""


def spec(lab):
    return {
        "type": "qemu",
        "memory": 32,
        "boot": ["hd"],
        "disks": [{"path": os.path.join(lab.images_dir, GUEST + ".qcow2"), "format": "qcow2", "cache": "none"}],
        "lease": {},
    }


class Listener:
    """The independent event listener on one host: a process of its own, lines read by a thread."""

    def __init__(self, host):
        self.host = host
        self.proc = subprocess.Popen(
            [LAB, "exec", host, "--", "python3", "-u", "-c", LISTENER, GUEST],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.items = []
        self.ready = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        try:
            self.ready.get(timeout=30)
        except queue.Empty:
            raise SystemExit("the event listener on {} did not start".format(host)) from None

    def _read(self):
        for line in self.proc.stdout:
            item = json.loads(line)
            if item.get("ready"):
                self.ready.put(True)
                continue
            item["host"] = self.host
            self.items.append(item)

    def since(self, ts):
        return [i for i in list(self.items) if i["ts"] >= ts]

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def pause_ms(src_events, dest_events):
    """Source SUSPENDED (its final vCPU stop) -> destination RESUMED, as the listeners saw them."""
    stop = next((e for e in src_events if e["event"] == 3), None)
    run = next((e for e in dest_events if e["event"] == 4), None)
    if stop is None or run is None:
        return None
    return round((run["ts"] - stop["ts"]) * 1000, 1)


def timeline(events, origin):
    return [
        "{:+8.1f} ms  {}  {}/{}".format(
            (e["ts"] - origin) * 1000, e["host"], EVENTS.get(e["event"], e["event"]), e["detail"]
        )
        for e in sorted(events, key=lambda e: e["ts"])
    ]


def bench_migrate(lab, rounds):
    hv1, hv2 = lab.hosts[:2]
    ok(lab.module(hv1, "lockstep.virt.domain", {"name": GUEST, "state": "running", "spec": spec(lab)}), "start")
    colls = os.path.join(REPO, ".build", "collections")
    site = os.path.join(REPO, ".venv", "lib", "python{}.{}".format(*sys.version_info[:2]), "site-packages")
    listeners = {h: Listener(h) for h in (hv1, hv2)}
    where = hv1
    methods = ("virsh migrate --live --p2p", "lockstep.virt.migrate")  # baseline first
    samples = {m: [] for m in methods}
    pauses = {m: [] for m in methods}
    extra = {"lease_gap_ms": [], "downtime_ms": []}
    timelines = {}
    try:
        for _round in range(rounds):
            for method in methods:
                dest = hv2 if where == hv1 else hv1
                mode = "plain" if method.startswith("virsh") else "module"
                time.sleep(1.0)  # let the previous round's events arrive
                began = time.time()
                res = lab.exec(where, "python3", "-c", RUNNER, mode, GUEST, dest, colls, site, timeout=300)
                out = json.loads(res.stdout.strip().splitlines()[-1])
                if not out["ok"]:
                    raise SystemExit("{} {}->{} failed: {}".format(method, where, dest, out.get("msg")))
                time.sleep(1.0)
                if lab.domain_state(dest, GUEST) != "running":
                    raise SystemExit("{}: {} is not running on {}".format(method, GUEST, dest))
                src_ev, dest_ev = listeners[where].since(began), listeners[dest].since(began)
                samples[method].append(out["wall_s"])
                pauses[method].append(pause_ms(src_ev, dest_ev))
                if mode == "module":
                    extra["lease_gap_ms"].append(out.get("lease_gap_ms"))
                    extra["downtime_ms"].append(out.get("downtime_ms"))
                stop = next((e for e in src_ev if e["event"] == 3), None)
                if stop is not None and method not in timelines:
                    timelines[method] = timeline(src_ev + dest_ev, stop["ts"])
                where = dest
    finally:
        for listener in listeners.values():
            listener.close()
    return samples, pauses, extra, timelines


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
    rounds = max(5, rounds)
    lab.cleanup_domain(GUEST)
    lab.new_disk(GUEST)
    try:
        migrate_samples, pauses, migrate_extra, timelines = bench_migrate(lab, rounds)
        lab.cleanup_domain(GUEST)
        ok(
            lab.module(lab.hosts[0], "lockstep.virt.domain", {"name": GUEST, "state": "present", "spec": spec(lab)}),
            "define",
        )
        start_samples = bench_start(lab, rounds)
    finally:
        lab.cleanup_domain(GUEST)
        os.unlink(os.path.join(lab.images_dir, GUEST + ".qcow2"))
    plain, module = list(pauses)
    med = {m: statistics.median([p for p in pauses[m] if p is not None]) for m in pauses}
    report = {
        "migrate": dict(summary(migrate_samples), **migrate_extra),
        "pause_ms": {
            "a": plain,
            "b": module,
            "median_a_ms": med[plain],
            "median_b_ms": med[module],
            "difference_ms": round(med[module] - med[plain], 1),
            "ratio_b_over_a": round(med[module] / med[plain], 3) if med[plain] else None,
            "samples_ms": pauses,
        },
        "start": summary(start_samples),
        "timelines": timelines,
    }
    lines = [
        "{} alternating round trips of a 32 MiB guest between two lab hosts; the machine is shared and "
        "loaded, so compare the ratios.".format(rounds),
        "",
        "| pair | A | median | B | median | B/A |",
        "|---|---|---|---|---|---|",
    ]
    p = report["pause_ms"]
    lines.append(
        "| guest-visible pause (event listeners) | {} | {} ms | {} | {} ms | {:.2f} (+{} ms) |".format(
            p["a"], p["median_a_ms"], p["b"], p["median_b_ms"], p["ratio_b_over_a"] or 0, p["difference_ms"]
        )
    )
    for pair, label in (("migrate", "wall time on the source host"), ("start", "start (via Ansible)")):
        r = report[pair]
        lines.append(
            "| {} | {} | {:.2f} s | {} | {:.2f} s | {:.2f} |".format(
                label, r["a"], r["median_a_s"], r["b"], r["median_b_s"], r["ratio_b_over_a"]
            )
        )
    lines.append("")
    lines.append(
        "Pause samples (ms): A {}; B {}. Targets: B pause <= A + 25 ms (median), B wall <= 1.15x A.".format(
            pauses[plain], pauses[module]
        )
    )
    for method, tl in timelines.items():
        lines += ["", "Event timeline, first round of {} (listeners, from the source's SUSPENDED):".format(method), ""]
        lines += ["    " + x for x in tl]
    return report, "\n".join(lines)
