"""Draining a host: the evacuate role at concurrency 1 and 4 against a serial `virsh migrate` loop.

Eight running 32 MiB BIOS-only guests, each with a disk lease and a VM lease, are moved off hv1
to hv2 and hv3 (a lab of three hosts) three ways, one after the other in every round:

- serial virsh: one `virsh migrate --live --p2p` after the other in a shell loop on hv1,
  destinations alternating - libvirt's own handoff, nothing placed or verified;
- role c1 / role c4: the lockstep.virt.evacuate role (placement by free memory, every move a
  verified lockstep.virt.migrate handoff, the final lease check) with evacuate_concurrency 1 / 4.

Each is timed as the user starts it: one ansible-playbook run from the controller (the loop as one
ansible.builtin.shell task), so each includes ansible-playbook's own start. The time inside is
reported too: the loop's own (timed in the shell) and migrate_many's elapsed_s, with every move's
time and pause. Between runs the guests are put back on hv1 (not timed).
"""

import statistics
from datetime import datetime

from benchlib import ok, timed
from labkit import define_and_start, tiny_domain_xml

NAME = "evacuate"
GUESTS = 8
PREFIX = "bench-ev"
TARGETS = {"role c4": 0.4, "role c1": 1.3}
MOVE_TASK = "lockstep.virt.evacuate : Move the guests, each with a verified lease handoff, a bounded number at a time"


def names():
    return ["{}{}".format(PREFIX, i) for i in range(GUESTS)]


def cleanup(lab):
    for name in names():
        lab.cleanup_domain(name)


def start_guests(lab, host):
    for name in names():
        disk = lab.new_disk(name)
        xml = tiny_domain_xml(name, disk=disk, lease=name, lockspace_dir=lab.lockspace_dir)
        lab.lease_file(name)
        res = define_and_start(lab, host, xml)
        if res.returncode != 0:
            raise SystemExit("cannot start {} on {}: {}".format(name, host, res.stderr))


def placement(lab):
    """{guest: host} of every active guest."""
    out = {}
    for host in lab.hosts:
        listed = lab.virsh(host, "list", "--name").stdout.split()
        for name in listed:
            if name.startswith(PREFIX):
                out.setdefault(name, []).append(host)
    return out


def check_drained(lab, method, src, dests):
    where = placement(lab)
    bad = dict((n, h) for n, h in where.items() if len(h) != 1 or h[0] not in dests)
    if bad or len(where) != GUESTS:
        raise SystemExit("{}: guests not all on {} exactly once: {}".format(method, dests, where))


def put_back(lab, src, dests):
    """All guests back on src, each destination sending its guests at once (not timed)."""
    script = (
        "for g in $(virsh -q list --name | grep '^{}'); do "
        "virsh -q migrate --live --p2p --unsafe --persistent --undefinesource $g qemu+ssh://{}/system & done; wait"
    )
    for host in dests:
        lab.exec(host, "sh", "-c", script.format(PREFIX, src), timeout=300)
    where = placement(lab)
    if any(h != [src] for h in where.values()) or len(where) != GUESTS:
        raise SystemExit("cannot put the guests back on {}: {}".format(src, where))


def serial_loop(lab, src, dests):
    steps = []
    for i, name in enumerate(names()):
        uri = "qemu+ssh://{}/system".format(dests[i % len(dests)])
        steps.append("virsh -q migrate --live --p2p --unsafe --persistent --undefinesource {} {}".format(name, uri))
    cmd = "set -e; s=$(date +%s.%N); {}; e=$(date +%s.%N); echo $s $e".format("; ".join(steps))
    seconds, result = timed(lab.module, src, "ansible.builtin.shell", {"cmd": cmd})
    ok(result, "serial virsh loop")
    start, end = (float(x) for x in result["stdout"].split())
    return seconds, {"inner_s": end - start}


def _at(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def profile(guest):
    """Where one move's time went, from its start and its migrate result's checkpoints (seconds)."""
    checkpoints = guest["result"]["lock_checkpoints"]
    start, first, last = _at(guest["started_at"]), _at(checkpoints[0]["at"]), _at(checkpoints[-1]["at"])
    sent = _at([c for c in checkpoints if c["name"] == "perform/send"][0]["at"])
    return {
        "setup_s": first - start,  # connections to both hosts, preflight checks, lease probes
        "send_s": sent - first,  # prepare on the destination, the memory copy
        "handoff_s": last - sent,  # source released, destination resumed and verified, source confirmed
        "exit_s": guest["elapsed_s"] - (last - start),  # connections closed, result back to the module
    }


PHASES = ("setup_s", "send_s", "handoff_s", "exit_s")


def role(lab, src, dests, concurrency):
    play = [
        {
            "hosts": src,
            "gather_facts": False,
            "roles": [
                {
                    "role": "lockstep.virt.evacuate",
                    "vars": {
                        "evacuate_destinations": dests,
                        "evacuate_pattern": PREFIX + "*",
                        "evacuate_concurrency": concurrency,
                        "evacuate_unsafe": True,
                    },
                }
            ],
        }
    ]
    seconds, run = timed(lab.playbook, play)
    if run.rc != 0:
        raise SystemExit("evacuate role (concurrency {}) failed: {}".format(concurrency, run.stdout[-3000:]))
    moved = run.task(MOVE_TASK, src)
    guests = moved["guests"]
    profiles = [profile(g) for g in guests]
    return seconds, {
        "inner_s": moved["elapsed_s"],
        "setup_s": [p["setup_s"] for p in profiles],
        "send_s": [p["send_s"] for p in profiles],
        "handoff_s": [p["handoff_s"] for p in profiles],
        "exit_s": [p["exit_s"] for p in profiles],
        "move_s": [g["elapsed_s"] for g in guests],
        "pause_ms": [g["downtime_ms"] for g in guests],
        "first_start_s": min(g["started_s"] for g in guests),
    }


def med(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def run(lab, rounds):
    if len(lab.hosts) < 3:
        raise SystemExit("the evacuate benchmark needs three hosts: tests/lab/lab up --hosts 3")
    src, dests = lab.hosts[0], lab.hosts[1:3]
    methods = {
        "serial virsh": lambda: serial_loop(lab, src, dests),
        "role c1": lambda: role(lab, src, dests, 1),
        "role c4": lambda: role(lab, src, dests, 4),
    }
    samples = dict((m, []) for m in methods)
    inner = dict((m, []) for m in methods)
    keys = ("move_s", "pause_ms", "first_start_s") + PHASES
    details = dict((m, dict((k, []) for k in keys)) for m in methods if m != "serial virsh")
    cleanup(lab)
    start_guests(lab, src)
    try:
        for _round in range(rounds):
            for method, fn in methods.items():
                seconds, extra = fn()
                check_drained(lab, method, src, dests)
                samples[method].append(round(seconds, 3))
                inner[method].append(round(extra["inner_s"], 3))
                for key in details.get(method, {}):
                    values = extra[key] if isinstance(extra[key], list) else [extra[key]]
                    details[method][key].extend(values)
                put_back(lab, src, dests)
    finally:
        cleanup(lab)
    serial = statistics.median(samples["serial virsh"])
    serial_inner = statistics.median(inner["serial virsh"])
    report = {"guests": GUESTS, "source": src, "destinations": dests, "methods": {}}
    rows = []
    for method in methods:
        wall = statistics.median(samples[method])
        entry = {
            "median_s": round(wall, 3),
            "ratio_to_serial": round(wall / serial, 3),
            "inner_median_s": med(inner[method]),
            "inner_ratio_to_serial": round(statistics.median(inner[method]) / serial_inner, 3),
            "samples_s": samples[method],
            "inner_samples_s": inner[method],
        }
        if method in TARGETS:
            entry["target_ratio"] = TARGETS[method]
            entry["target_met"] = entry["ratio_to_serial"] <= TARGETS[method]
        if method in details:
            entry["median_move_s"] = med(details[method]["move_s"])
            entry["median_pause_ms"] = med(details[method]["pause_ms"])
            entry["median_first_start_s"] = med(details[method]["first_start_s"])
            entry["median_move_profile_s"] = dict((k, med(details[method][k])) for k in PHASES)
        report["methods"][method] = entry
        rows.append(
            "| {} | {:.2f} | {:.2f}x | {} | {:.2f} | {:.2f}x | {} | {} |".format(
                method,
                entry["median_s"],
                entry["ratio_to_serial"],
                "≤ {}x: {}".format(TARGETS[method], "met" if entry["target_met"] else "missed")
                if method in TARGETS
                else "baseline",
                entry["inner_median_s"],
                entry["inner_ratio_to_serial"],
                entry.get("median_move_s", "-"),
                entry.get("median_pause_ms", "-"),
            )
        )
    markdown = "\n".join(
        [
            "{} running 32 MiB guests (disk lease + VM lease each) off {} to {}; {} rounds, alternating; "
            "medians.".format(GUESTS, src, " and ".join(dests), rounds),
            "",
            "| method | wall s (ansible-playbook) | vs serial | target | inside s (loop / migrate_many) "
            "| inside vs serial | move s (each) | pause ms (each) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        + rows
        + [
            "",
            "Where a move's time goes (medians, s) and the role's time outside the moves:",
            "",
            "| method | setup | send | handoff | exit | first move starts at | playbook outside migrate_many |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        + [
            "| {} | {} | {} | {} | {} | {} | {:.2f} |".format(
                m,
                *[report["methods"][m]["median_move_profile_s"][k] for k in PHASES],
                report["methods"][m]["median_first_start_s"],
                report["methods"][m]["median_s"] - report["methods"][m]["inner_median_s"],
            )
            for m in details
        ]
        + [
            "",
            "Setup: from the move's start to its first checkpoint (the migrate engine connecting to both hosts, "
            "its preflight and lease probes); send: to perform/send (prepare and the memory copy); handoff: to "
            "the last checkpoint (source released, destination resumed, leases verified, source confirmed); "
            "exit: the rest of the move (connections closed, result returned).",
            "",
            "Wall: the whole ansible-playbook run from the controller (the serial loop as one shell task). "
            "Inside: the loop's own time in the shell; migrate_many's elapsed_s for the role. "
            "Move and pause: each guest's migrate run and its downtime_ms.",
        ]
    )
    return report, markdown
