"""Converging many guests on one host: lockstep.virt.apply against the loops users write today.

N guests (N = 20 and 200; 20 of them running, the rest defined) of 32 MiB, BIOS-only, from the same XML,
converged on hv1 four ways, each one ansible-playbook run from the controller (pipelining on):

- apply: one lockstep.virt.apply task listing every guest;
- domain loop: a lockstep.virt.domain task looped over the guests;
- community.libvirt: community.libvirt 2.0.0's virt module, a define loop over the guests and a state
  loop over the running ones (installed for the benchmark only, from the ``ansible`` package on PyPI, into
  a collections path of its own under the lab cache);
- one task: a playbook of one ansible.builtin.ping task on hv1 - the floor any one-task run pays.

For each size and round the contenders run in turn (the order rotating every round), each from no guests:
its first (creating) run, then the same again (no change). Between contenders the guests are removed (not
timed). Medians and spreads of the rounds are reported against the goals; then one more no-change apply
at the largest size is profiled - the engine on the host (cProfile) and the controller's task times
(ansible.posix.profile_tasks) - and the time against guest count is plotted per contender.
"""

import glob
import json
import os
import statistics
import subprocess
import sys
import time
import zipfile

from benchlib import REPO, RESULTS
from labkit import tiny_domain_xml
from labpaths import CACHE_DIR  # tests/lab, on the path through labkit

NAME = "converge"
# LOCKSTEP_BENCH_CONVERGE_SIZES=20 for a short run while developing
SIZES = tuple(int(n) for n in os.environ.get("LOCKSTEP_BENCH_CONVERGE_SIZES", "20,200").split(","))
RUNNING = 20
PREFIX = "bench-cv"
ANSIBLE_PACKAGE = "ansible==12.3.0"  # bundles community.libvirt 2.0.0 and ansible.posix (profile_tasks)
BENCH_CACHE = os.path.join(CACHE_DIR, "bench")
BENCH_COLLECTIONS = os.path.join(BENCH_CACHE, "collections")
BENCH_PYLIB = os.path.join(BENCH_CACHE, "pylib")
CONTENDERS = ("apply", "domain loop", "community.libvirt", "one task")
PLOT = os.path.join(RESULTS, "converge.png")
# goals at the largest size: (what, contender, run, measure, limit)
GOALS = (
    ("no-change apply within 2.5x a one-task playbook", "apply", "nochange", "vs_one_task", 2.5),
    ("no-change apply at least 30x faster than community.libvirt", "apply", "nochange", "cl_over_apply", 30.0),
    ("first apply no slower than the domain loop", "apply", "first", "vs_domain_loop", 1.0),
)


# --------------------------------------------------------------------------- setup
def ensure_contenders():
    """community.libvirt and ansible.posix in a collections path of their own; matplotlib for the plot."""
    wanted = ("community/libvirt", "ansible/posix")
    if not all(os.path.isdir(os.path.join(BENCH_COLLECTIONS, "ansible_collections", w)) for w in wanted):
        download = os.path.join(BENCH_CACHE, "download")
        os.makedirs(download, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", download, ANSIBLE_PACKAGE]
        subprocess.run(pip, check=True)
        wheel = [f for f in os.listdir(download) if f.startswith("ansible-") and f.endswith(".whl")][0]
        with zipfile.ZipFile(os.path.join(download, wheel)) as z:
            for member in z.namelist():
                if any(member.startswith("ansible_collections/{}/".format(w)) for w in wanted):
                    z.extract(member, BENCH_COLLECTIONS)
    if not os.path.isdir(os.path.join(BENCH_PYLIB, "matplotlib")):
        pip = [sys.executable, "-m", "pip", "install", "-q", "--target", BENCH_PYLIB, "matplotlib"]
        if subprocess.run(pip, check=False).returncode != 0:
            print("matplotlib could not be installed: no plot", file=sys.stderr)


def bench_env(profile=False):
    env = {"ANSIBLE_COLLECTIONS_PATH": "{collections}" + os.pathsep + BENCH_COLLECTIONS}
    if profile:
        env["ANSIBLE_CALLBACKS_ENABLED"] = "lab_record,ansible.posix.profile_tasks"
    return env


# --------------------------------------------------------------------------- guests
def names(n):
    return ["{}{:03d}".format(PREFIX, i) for i in range(n)]


def guests(n):
    return [
        {"name": name, "state": "running" if i < RUNNING else "present", "xml": tiny_domain_xml(name)}
        for i, name in enumerate(names(n))
    ]


def cleanup(lab, host):
    script = (
        "for g in $(virsh -q list --all --name | grep '^{}'); do "
        "virsh -q destroy $g >/dev/null 2>&1; virsh -q undefine --nvram $g >/dev/null; done"
    ).format(PREFIX)
    lab.exec(host, "sh", "-c", script, timeout=600)


def check_host(lab, host, n):
    running = [x for x in lab.virsh(host, "list", "--name").stdout.split() if x.startswith(PREFIX)]
    defined = [x for x in lab.virsh(host, "list", "--all", "--name").stdout.split() if x.startswith(PREFIX)]
    if len(running) != min(n, RUNNING) or len(defined) != n:
        raise SystemExit("{} guests of {}: {} running, {} defined".format(host, n, len(running), len(defined)))


# --------------------------------------------------------------------------- contenders
def play(host, n, contender):
    g = guests(n)
    if contender == "apply":
        tasks = [{"name": "converge", "lockstep.virt.apply": {"domains": g}}]
    elif contender == "domain loop":
        args = {"name": "{{ item.name }}", "state": "{{ item.state }}", "xml": "{{ item.xml }}"}
        tasks = [
            {"name": "converge", "lockstep.virt.domain": args, "loop": g, "loop_control": {"label": "{{ item.name }}"}}
        ]
    elif contender == "community.libvirt":
        tasks = [
            {
                "name": "define",
                "community.libvirt.virt": {"command": "define", "xml": "{{ item.xml }}"},
                "loop": g,
                "loop_control": {"label": "{{ item.name }}"},
            },
            {
                "name": "start",
                "community.libvirt.virt": {"name": "{{ item.name }}", "state": "running"},
                "loop": [x for x in g if x["state"] == "running"],
                "loop_control": {"label": "{{ item.name }}"},
            },
        ]
    else:
        tasks = [{"name": "ping", "ansible.builtin.ping": {}}]
    return [{"hosts": host, "gather_facts": False, "tasks": tasks}]


def converge(lab, host, n, contender, profile=False):
    """Seconds of one ansible-playbook run, and how many of its task results changed something."""
    started = time.monotonic()
    run = lab.playbook(play(host, n, contender), env=bench_env(profile), timeout=1800)
    seconds = time.monotonic() - started
    if run.rc != 0:
        raise SystemExit("{} ({} guests) failed: {}".format(contender, n, run.stdout[-3000:]))
    changed = sum(1 for r in run.results if r["host"] == host and r["result"].get("changed"))
    return seconds, changed, run


# --------------------------------------------------------------------------- profiles
HOST_PROFILE = r"""
import cProfile, io, json, pstats, sys, time
sys.path.insert(0, sys.argv[1])
sys.path.append(sys.argv[2])  # ansible's module_utils, from the controller's venv (the host's own python)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.connection import Connection
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.apply import ApplyManager
params = {"domains": json.load(sys.stdin), "prune": False, "lock": {}}
with Connection("qemu:///system") as conn:
    started = time.monotonic()
    ApplyManager(conn, dict(params)).run()
    plain = time.monotonic() - started
    prof = cProfile.Profile()
    prof.enable()
    ApplyManager(conn, dict(params)).run()
    prof.disable()
out = io.StringIO()
pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
print(json.dumps({"engine_s": plain, "top": out.getvalue()}))
"""


def profile_host(lab, host, n):
    """The apply engine's own time on the host for a no-change run, and where it goes (cProfile)."""
    res = lab.exec(
        host,
        "python3",
        "-c",
        HOST_PROFILE,
        os.path.join(REPO, ".build", "collections"),
        glob.glob(os.path.join(REPO, ".venv", "lib", "python3*", "site-packages"))[0],
        input=json.dumps(guests(n)),
        timeout=600,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def task_times(stdout):
    """profile_tasks' closing lines: {task: seconds}."""
    out = {}
    for line in stdout.splitlines():
        if " -" in line and line.rstrip().endswith("s") and "---" in line:
            name, _sep, secs = line.rpartition(" ")
            try:
                out[name.strip(" -")] = float(secs.rstrip("s"))
            except ValueError:
                continue
    return out


# --------------------------------------------------------------------------- report
def med(values):
    return round(statistics.median(values), 3) if values else None


def spread(values):
    return round(max(values) - min(values), 3) if values else None


def plot(report):
    sys.path.insert(0, BENCH_PYLIB)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    sizes = sorted(int(n) for n in report["sizes"])
    for ax, run, title in zip(axes, ("first", "nochange"), ("first (creating) run", "no-change run")):
        for contender in CONTENDERS:
            ys = [report["sizes"][str(n)][contender][run]["median_s"] for n in sizes]
            ax.plot(sizes, ys, marker="o", label=contender)
        ax.set_title(title)
        ax.set_xlabel("guests on the host")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("seconds (ansible-playbook, median)")
    axes[1].legend()
    fig.suptitle("Converging one host: time against guest count (lab, {} running)".format(RUNNING))
    fig.tight_layout()
    fig.savefig(PLOT, dpi=90)
    return os.path.relpath(PLOT, RESULTS)


def goals(report):
    largest = report["sizes"][str(max(int(n) for n in report["sizes"]))]
    out = []
    for what, contender, run, measure, limit in GOALS:
        mine = largest[contender][run]["median_s"]
        if measure == "vs_one_task":
            value = mine / largest["one task"][run]["median_s"]
            met = value <= limit
            text = "{:.2f}x (goal <= {}x)".format(value, limit)
        elif measure == "cl_over_apply":
            value = largest["community.libvirt"][run]["median_s"] / mine
            met = value >= limit
            text = "{:.1f}x faster (goal >= {}x)".format(value, limit)
        else:
            value = mine / largest["domain loop"][run]["median_s"]
            met = value <= limit
            text = "{:.2f}x the domain loop (goal <= {}x)".format(value, limit)
        out.append({"goal": what, "value": round(value, 3), "text": text, "met": met})
    return out


def markdown(report):
    lines = []
    for n in sorted(report["sizes"], key=int):
        lines.append("**{} guests** ({} running):\n".format(n, min(int(n), RUNNING)))
        lines.append("| contender | first run (s) | spread | no-change run (s) | spread | no-change vs one task |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        size = report["sizes"][n]
        floor = size["one task"]["nochange"]["median_s"]
        for contender in CONTENDERS:
            row = size[contender]
            lines.append(
                "| {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f}x |".format(
                    contender,
                    row["first"]["median_s"],
                    row["first"]["spread_s"],
                    row["nochange"]["median_s"],
                    row["nochange"]["spread_s"],
                    row["nochange"]["median_s"] / floor,
                )
            )
        lines.append("")
    lines.append("Goals at {} guests:\n".format(max(int(n) for n in report["sizes"])))
    for g in report["goals"]:
        lines.append("- {}: {} - **{}**".format(g["goal"], g["text"], "met" if g["met"] else "missed"))
    prof = report.get("profile")
    if prof:
        lines.append("")
        lines.append(
            "Profile of a no-change apply at {} guests: the engine on the host {:.2f} s of the run's "
            "{:.2f} s; the task itself {:.2f} s as the controller timed it (profile_tasks).".format(
                prof["guests"], prof["engine_s"], prof["wall_s"], prof["task_s"] or 0.0
            )
        )
    if report.get("plot"):
        lines.append("")
        lines.append("![time against guest count]({})".format(report["plot"]))
    return "\n".join(lines)


def run(lab, rounds, sizes=SIZES):
    ensure_contenders()
    host = lab.hosts[0]
    samples = dict((n, dict((c, {"first": [], "nochange": [], "changed": []}) for c in CONTENDERS)) for n in sizes)
    for n in sizes:
        for r in range(rounds):
            order = CONTENDERS[r % len(CONTENDERS) :] + CONTENDERS[: r % len(CONTENDERS)]
            for contender in order:
                cleanup(lab, host)
                first, _changed, _run = converge(lab, host, n, contender)
                if contender != "one task":
                    check_host(lab, host, n)
                again, changed, _run = converge(lab, host, n, contender)
                s = samples[n][contender]
                s["first"].append(first)
                s["nochange"].append(again)
                s["changed"].append(changed)
                print(
                    "{} guests, round {}, {}: first {:.2f} s, no change {:.2f} s".format(
                        n, r + 1, contender, first, again
                    )
                )
    report = {"host": host, "running": RUNNING, "sizes": {}}
    for n in sizes:
        report["sizes"][str(n)] = dict(
            (
                c,
                {
                    "first": {"median_s": med(v["first"]), "spread_s": spread(v["first"]), "samples_s": v["first"]},
                    "nochange": {
                        "median_s": med(v["nochange"]),
                        "spread_s": spread(v["nochange"]),
                        "samples_s": v["nochange"],
                        "changed_results": v["changed"],
                    },
                },
            )
            for c, v in samples[n].items()
        )
    report["goals"] = goals(report)
    # where the largest no-change apply spends its time: the engine on the host, the task on the controller
    n = max(sizes)
    cleanup(lab, host)
    converge(lab, host, n, "apply")
    wall, _changed, prof_run = converge(lab, host, n, "apply", profile=True)
    host_prof = profile_host(lab, host, n)
    times = task_times(prof_run.stdout)
    report["profile"] = {
        "guests": n,
        "wall_s": round(wall, 3),
        "task_s": next((v for k, v in times.items() if k.startswith("converge")), None),
        "engine_s": round(host_prof["engine_s"], 3),
        "engine_top": host_prof["top"],
        "controller_tasks": times,
    }
    cleanup(lab, host)
    report["plot"] = plot(report)
    return report, markdown(report)
