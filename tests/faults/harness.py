"""The fault harness: a guest with a disk lease and a VM lease migrating hv1 -> hv2 through a real
ansible-playbook run, a fault injected at one phase of that run, the invariants checked, and the same task
run again, which must converge with no manual clean-up.

Phases (how the harness knows it is there, from outside the module):
- ``before``: the fault is in place before the run starts.
- ``during``: the transfer is capped (``bandwidth``) and the fault goes in once hv2 holds the incoming,
  paused copy.
- ``after``: the transfer is done, hv2 has not resumed: a process on hv2 takes the VM lease the instant the
  source releases it and holds it ``AFTER_HOLD`` seconds (the module retries, ``lock.acquire_timeout``); the
  fault goes in while it holds it. On lockd the process takes virtlockd's fcntl lock on the lease file; on
  sanlock it registers with hv2's sanlock daemon and acquires the resource through it (the ``sanlock``
  Python binding, Debian's python3-sanlock), as libvirt's plugin does for a guest.
- ``resume``: the fault goes in the moment hv2 reports the guest running while the run has not ended.

Invariants after every run: never two running copies (two hosts running the guest at one instant, by
libvirt's lifecycle events on both hosts, tests/integration/observe.py; the same for the run again); a guest
running nowhere only where the module said so; the definition intact on a host; the leases held only by the
lock manager of the host that runs the guest (on a lockd lab its virtlockd, by F_GETLK on the lease files; on a
sanlock lab its sanlock: the owner host_id in each lease's leader record on the shared storage, read by the
harness itself, and the host's daemon listing both leases in ``sanlock client status`` while the other host's
lists neither); a failed run's message names its phase; a shut-off copy on the
other host is noted. Every outcome keeps the guest's event timeline (``timeline``) and the pause the events
show (``pause_ms``, None without a source suspend and a destination resume after it); a cell with a problem
also the timeline of the run again (``rerun_timeline``).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import libvirt
import yaml
from labkit import LAB, REPO, lab_state, sanlock_leader
from migrate_helpers import MIGRATION_PORTS, MODULE, Guest, lease_grabber, sanlock_lease_grabber
from observe import EventObserver

sys.path.insert(0, os.path.join(REPO, "tests", "lab"))
from labpaths import NETNS_PREFIX

PHASES = ("before", "during", "after", "resume")
PHASE_WORDS = ("begin", "prepare", "perform", "finish", "confirm")
AFTER_HOLD = 3
RUN_TIMEOUT = 150
# The module reports a guest left running nowhere in these words (see the migrate module's description).
NOWHERE_WORDS = ("runs nowhere", "running nowhere")


def migrate_args(guest, dst="hv2", **extra):
    args = {"name": guest.name, "dest_uri": "qemu+ssh://{}/system".format(dst), "unsafe": True, "timeout": 60}
    args.update(extra)
    return args


class Run:
    """One ansible-playbook run of a task (the migrate task unless ``module``), in the background, that can
    be interrupted."""

    def __init__(self, lab, src, args, module=MODULE):
        self.lab = lab
        self.tmp = tempfile.mkdtemp(prefix="fault-run-")
        self.record = os.path.join(self.tmp, "record.jsonl")
        play = [{"hosts": src, "gather_facts": False, "tasks": [{"name": "migrate", module: args}]}]
        path = os.path.join(self.tmp, "play.yml")
        with open(path, "w") as fh:
            yaml.safe_dump(play, fh)
        self.out = open(os.path.join(self.tmp, "out.txt"), "w")
        self.proc = subprocess.Popen(
            ["ansible-playbook", "-i", lab.inventory, path],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            env=lab._env(self.record),
            cwd=REPO,
        )

    def alive(self):
        return self.proc.poll() is None

    def wait(self, timeout=RUN_TIMEOUT):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()
        return self.result()

    def result(self):
        """The task's result, or None when the run ended without one (interrupted)."""
        if not os.path.exists(self.record):
            return None
        with open(self.record) as fh:
            entries = [json.loads(line) for line in fh]
        for e in entries:
            if e["task"] == "migrate":
                r = dict(e["result"])
                r["failed"] = e["status"] != "ok"
                return r
        return None

    def output(self):
        with open(os.path.join(self.tmp, "out.txt")) as fh:
            return fh.read()


class Watch:
    """Where the guest ran, judged by libvirt's lifecycle events on each host (observe.EventObserver: one
    clock for every host, so "two running copies" means two hosts ran it at the same instant), and the lease
    holders sampled every few ms (F_GETLK), until stopped.

    Both hosts' states are also sampled (virDomainGetState, as ``virsh domstate``), one host after the other,
    for notes only: two sequential samples are ms apart, so they can see the source running and, one call later, the
    destination running when no instant had both, and miss a short real overlap.
    """

    def __init__(self, lab, guest, hosts=("hv1", "hv2")):
        self.lab, self.guest, self.hosts = lab, guest, hosts
        self.observer = EventObserver(lab, hosts, [guest.name])
        self.states = []  # {host: state}, sequential reads
        self.holders = []  # (disk lease holder, VM lease holder)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._states, daemon=True), threading.Thread(target=self._leases)]
        self.origin = None

    def _states(self):
        while not self._stop.is_set():
            self.states.append(dict((h, self.lab.domain_state(h, self.guest.name)) for h in self.hosts))
            self._stop.wait(0.02)  # a read is a local RPC of a few ms: this is tens of samples a second

    def _leases(self):
        while not self._stop.is_set():
            self.holders.append(tuple(lease_sample(self.lab, p) for p in self.guest.leases))
            time.sleep(0.005)

    def __enter__(self):
        self.observer.start()
        self.origin = time.monotonic()
        for t in self._threads:
            t.daemon = True
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(30)
        try:
            self.observer.settle()
        finally:
            self.observer.stop()

    def _describe(self, overlaps):
        out = []
        for t_from, t_to, hosts in overlaps:
            span = "until the end" if t_to is None else "for {:.1f} ms".format((t_to - t_from) * 1000)
            out.append(
                "{} ran it at the same time {} from {:+.1f} ms".format(
                    " and ".join(hosts), span, (t_from - self.origin) * 1000
                )
            )
        return out

    def two_running(self):
        """Each time two hosts ran the guest at the same instant, by their events (described)."""
        return self._describe(self.observer.overlaps(self.guest.name))

    def possibly_two_running(self):
        """Overlaps that are possible only because an observer lost libvirtd (a daemon killed or restarted)."""
        certain = self.observer.overlaps(self.guest.name)
        return self._describe([o for o in self.observer.possible_overlaps(self.guest.name) if o not in certain])

    def sampled_two_running(self):
        """The state samples that saw the guest running on two hosts (sequential reads: not one instant)."""
        return [s for s in self.states if sum(1 for v in s.values() if v == "running") > 1]

    def two_holders(self, ignore=()):
        """Samples in which two processes held the guest's leases; ``ignore``: the fault's own holder (it
        stands for another guest holding the VM lease, and a host trying to resume may hold the disk lease
        for a moment beside it)."""
        return [h for h in self.holders if len(set(holder_of(x) for x in h if x and x not in ignore)) > 1]

    def seen(self, host, state):
        return any(s.get(host) == state for s in self.states)

    def timeline(self):
        """The guest's events on every host, ms from the start of the watch."""
        return self.observer.timeline(self.guest.name, origin=self.origin)


def lease_sample(lab, path):
    """One sample of a lease's holder: virtlockd's pid on lockd; on sanlock ``host@lver`` (the owner host and
    the lease version of the leader record: every acquire makes a new version, so the fault's own holder is
    told apart from the same host's QEMU taking the lease later)."""
    if lab.lock_manager != "sanlock":
        return lab.lease_holder(path)
    leader = sanlock_leader(path)
    if leader is None or not leader["timestamp"]:
        return None
    return "{}@{}".format(lab.sanlock_hosts.get(leader["owner_id"], leader["owner_id"]), leader["lver"])


def holder_of(sample):
    """The holder a sample names: a pid (lockd), a host (sanlock, whatever the lease version)."""
    return sample.split("@")[0] if isinstance(sample, str) else sample


def lease_holders_agree(lab, guest, host):
    """Problems with the leases of a guest running on ``host``: both must be held by ``host``'s lock manager
    and nobody else's. On sanlock both views are asked: the lease area (owner host_id) and every host's daemon
    (``sanlock client status``)."""
    want = lab.lease_holder_of(host)
    seen = guest.holders()
    problems = []
    if seen != [want, want]:
        problems.append("leases {} while the guest runs on {} ({})".format(seen, host, want))
    if lab.lock_manager == "sanlock":
        daemons = guest.daemon_holders()
        if daemons != [host, host]:
            problems.append("sanlock daemons list the leases held by {} while it runs on {}".format(daemons, host))
    return problems


def grabber(lab, host, guest, hold):
    if lab.lock_manager == "sanlock":
        return sanlock_lease_grabber(lab, host, guest, hold=hold)
    return lease_grabber(lab, host, guest.vm_lease, hold=hold)


def grabber_id(lab, host, marker):
    """The fault's own holder as the lease samples name it: its pid (lockd), ``host@lver`` (sanlock)."""
    try:
        with open(marker) as fh:
            words = fh.read().split()
    except OSError:
        return None
    if not words:
        return None
    if lab.lock_manager == "sanlock":
        return "{}@{}".format(host, words[1]) if len(words) > 1 else None
    return int(words[0])


def wait_for(pred, alive, timeout=60):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline or (alive is not None and not alive()):
            return False
        time.sleep(0.05)
    return True


# --------------------------------------------------------------------------- faults
def _refresh(lab):
    lab.state = lab_state()


def kill_libvirtd(lab, host):
    os.kill(lab.state["hosts"][host]["pids"]["libvirtd"], signal.SIGKILL)


def restart(lab, host, daemon="libvirtd"):
    subprocess.run([LAB, "restart", host, daemon], check=True, capture_output=True, timeout=120)
    _refresh(lab)


def daemon_alive(lab, host, daemon="libvirtd"):
    pid = lab.state["hosts"][host]["pids"][daemon]
    try:
        with open("/proc/{}/stat".format(pid)) as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def netns_inode(pid):
    return os.stat("/proc/{}/ns/net".format(pid)).st_ino


def host_netns(lab, host):
    return netns_inode(lab.state["hosts"][host]["anchor"])


def processes_in(lab, host, match):
    """Pids of processes in ``host``'s network namespace whose command line satisfies ``match(argv)``."""
    ns = host_netns(lab, host)
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if netns_inode(entry) != ns:
                continue
            with open("/proc/{}/cmdline".format(entry), "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
        except OSError:
            continue
        if argv and match(argv):
            out.append(int(entry))
    return out


def qemu_pids(lab, host, name):
    return processes_in(
        lab, host, lambda a: "qemu" in os.path.basename(a[0]) and "guest={},".format(name) in " ".join(a)
    )


def module_pids(lab, host):
    """The migrate module's Python process on ``host`` (pipelined: ``python3`` reading its payload on stdin)."""
    return processes_in(lab, host, lambda a: os.path.basename(a[0]).startswith("python3") and len(a) == 1)


def modules_at_work(lab, host):
    """The module's processes on ``host`` still at work. One orphaned by a killed controller that is blocked
    writing its result to the gone controller has done its work: it is ended (the run started it) and not
    counted."""
    out = []
    for pid in module_pids(lab, host):
        try:
            with open("/proc/{}/wchan".format(pid)) as fh:
                blocked = "pipe_write" in fh.read()
        except OSError:
            continue
        if blocked:
            kill_pids([pid])
        else:
            out.append(pid)
    return out


def migration_job_active(lab, host, name):
    """Whether libvirtd on ``host`` still runs a job for the guest: a peer-to-peer migration goes on inside
    libvirtd after the module that started it was killed, so what it leaves is read once it is over."""
    job = lab.connections.job_type(host, name)  # None: no such guest (any more), or no libvirtd to ask
    return job not in (None, libvirt.VIR_DOMAIN_JOB_NONE)


def kill_pids(pids, sig=signal.SIGKILL):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def iptables(lab, host, action, target):
    rule = ["INPUT", "-p", "tcp", "--dport", MIGRATION_PORTS, "-j", target]
    lab.exec(host, "iptables", action, *rule, check=(action == "-I"))


def veth(host):
    return NETNS_PREFIX + host


def link(host, up):
    subprocess.run(["ip", "link", "set", veth(host), "up" if up else "down"], check=True)


class Fault:
    """What is injected (``inject(ctx)``) and how the lab is brought back (``restore(ctx)``, always)."""

    name = ""
    phases = PHASES
    interrupts = False  # the run itself is interrupted: only a reconciling module converges by design

    def kills_the_guest(self, phase):
        """Whether the fault, at ``phase``, ends the guest itself (not something a handoff can survive)."""
        return False

    def inject(self, ctx):
        raise NotImplementedError

    def restore(self, ctx):
        pass


class DestLibvirtdKilled(Fault):
    name = "dest libvirtd killed"

    def inject(self, ctx):
        kill_libvirtd(ctx.lab, "hv2")

    def restore(self, ctx):
        if not daemon_alive(ctx.lab, "hv2"):
            restart(ctx.lab, "hv2")


class DestQemuKilled(Fault):
    name = "dest QEMU killed"
    phases = ("during", "after", "resume")  # before the transfer there is no QEMU on the destination

    def inject(self, ctx):
        kill_pids(qemu_pids(ctx.lab, "hv2", ctx.guest.name))

    def kills_the_guest(self, phase):
        # once libvirt has confirmed the source (right after the guest arrived, ``after``; or once it runs on
        # hv2, ``resume``), hv2's QEMU holds the only copy of the guest: killing it ends the guest like any
        # crash. The module must say where it stopped, and the task run again that it runs nowhere.
        return phase in ("after", "resume")


class SourceLibvirtdRestarted(Fault):
    name = "source libvirtd restarted"

    def inject(self, ctx):
        restart(ctx.lab, "hv1")


class LinkCut(Fault):
    name = "link cut"

    def inject(self, ctx):
        link("hv2", False)
        ctx.timers.append(threading.Timer(5, link, ("hv2", True)))
        ctx.timers[-1].start()

    def restore(self, ctx):
        link("hv2", True)


class PortsBlocked(Fault):
    name = "migration ports blocked"
    phases = ("before", "during")  # after the transfer the ports carry nothing

    def inject(self, ctx):
        ctx.rule = "REJECT" if ctx.phase == "before" else "DROP"
        iptables(ctx.lab, "hv2", "-I", ctx.rule)

    def restore(self, ctx):
        iptables(ctx.lab, "hv2", "-D", getattr(ctx, "rule", "REJECT"))


class LeaseHeldOnDest(Fault):
    name = "VM lease held on dest"
    phases = ("after",)  # the source holds it until it releases, after the transfer

    def inject(self, ctx):
        pass  # the ``after`` phase's holder is the fault: it keeps the lease past lock.acquire_timeout

    hold = 30


class ModuleKilled(Fault):
    name = "module SIGKILLed on source"
    interrupts = True

    def inject(self, ctx):
        kill_pids(module_pids(ctx.lab, "hv1"))


class ControllerInterrupted(Fault):
    interrupts = True

    def __init__(self, sig):
        self.sig = sig
        self.name = "controller {}".format("SIGINT" if sig == signal.SIGINT else "SIGKILL")

    def inject(self, ctx):
        ctx.run.proc.send_signal(self.sig)


FAULTS = [
    DestLibvirtdKilled(),
    DestQemuKilled(),
    SourceLibvirtdRestarted(),
    LinkCut(),
    PortsBlocked(),
    LeaseHeldOnDest(),
    ModuleKilled(),
    ControllerInterrupted(signal.SIGINT),
    ControllerInterrupted(signal.SIGKILL),
]


# --------------------------------------------------------------------------- one cell
class Context:
    def __init__(self, lab, guest, phase):
        self.lab, self.guest, self.phase = lab, guest, phase
        self.run = None
        self.timers = []
        self.grabber_pid = None


def run_cell(lab, name, fault, phase):
    """Inject ``fault`` at ``phase`` of a hv1 -> hv2 migration of a fresh guest; return the outcome dict."""
    guest = Guest(lab, name, "hv1")
    ctx = Context(lab, guest, phase)
    outcome = {"fault": fault.name, "phase": phase, "injected": False, "problems": [], "notes": []}
    try:
        extra = {}
        if phase == "during":
            extra["bandwidth"] = 1
        if phase == "after":
            extra["lock"] = {"acquire_timeout": 20 if not isinstance(fault, LeaseHeldOnDest) else 3}
        args = migrate_args(guest, **extra)
        with Watch(lab, guest) as watch:
            if phase == "before" and not fault.interrupts:
                fault.inject(ctx)
                outcome["injected"] = True
            grab_cm = None
            if phase == "after":
                hold = getattr(fault, "hold", AFTER_HOLD)
                grab_cm = grabber(lab, "hv2", guest, hold)
                grab = grab_cm.__enter__()
            try:
                ctx.run = Run(lab, "hv1", args)
                if phase == "during":
                    hit = wait_for(lambda: lab.domain_state("hv2", guest.name) == "paused", ctx.run.alive)
                elif phase == "after":
                    hit = wait_for(lambda: os.path.exists(grab["marker"]), ctx.run.alive)
                    ctx.grabber_pid = grabber_id(lab, "hv2", grab["marker"])
                elif phase == "resume":
                    hit = wait_for(lambda: lab.domain_state("hv2", guest.name) == "running", ctx.run.alive)
                elif fault.interrupts:  # before: as soon as the module runs on the source
                    hit = wait_for(lambda: module_pids(lab, "hv1"), ctx.run.alive)
                else:
                    hit = True
                if phase != "before" or fault.interrupts:
                    if hit and ctx.run.alive():
                        fault.inject(ctx)
                        outcome["injected"] = True
                    else:
                        outcome["notes"].append("phase {} not reached while the run was alive".format(phase))
                result = ctx.run.wait()
                outcome["run_dir"] = ctx.run.tmp
                if fault.interrupts:
                    # a killed controller leaves the module on hv1 running on (its ssh session gone): the
                    # invariants are read once it is done, not while it is half way through a handoff
                    waited = time.monotonic()
                    if not wait_for(lambda: not modules_at_work(lab, "hv1"), None, timeout=RUN_TIMEOUT):
                        outcome["problems"].append("the module on hv1 still ran {} s after the run".format(RUN_TIMEOUT))
                    elif time.monotonic() - waited > 0.5:
                        outcome["notes"].append(
                            "the module on hv1 ran on {:.1f} s after the controller".format(time.monotonic() - waited)
                        )
                    waited = time.monotonic()
                    if not wait_for(lambda: not migration_job_active(lab, "hv1", guest.name), None, RUN_TIMEOUT):
                        outcome["problems"].append("hv1 still ran a migration job {} s on".format(RUN_TIMEOUT))
                    elif time.monotonic() - waited > 0.5:
                        outcome["notes"].append(
                            "hv1's migration job ran on {:.1f} s after the module".format(time.monotonic() - waited)
                        )
            finally:
                if grab_cm is not None:
                    grab_cm.__exit__(None, None, None)
                for t in ctx.timers:
                    t.cancel()
                fault.restore(ctx)
            time.sleep(1)  # let a restarted daemon settle before the last samples
        outcome["result"] = _summary(result)
        outcome["pause_ms"] = watch.observer.pause_ms(guest.name, "hv1", "hv2")
        outcome["timeline"] = watch.timeline()
        check_invariants(lab, guest, watch, result, fault, outcome, ignore=(ctx.grabber_pid,))
        # the same task again: it must converge with no manual clean-up
        if not daemon_alive(lab, "hv2"):
            restart(lab, "hv2")
        with EventObserver(lab, ("hv1", "hv2"), [guest.name]) as rerun_events:
            rerun = Run(lab, "hv1", migrate_args(guest))
            again = rerun.wait()
        outcome["rerun_dir"] = rerun.tmp
        for t_from, t_to, hosts in rerun_events.overlaps(guest.name):
            span = "until the end" if t_to is None else "for {:.1f} ms".format((t_to - t_from) * 1000)
            outcome["problems"].append("the run again: {} ran it at the same time {}".format(" and ".join(hosts), span))
        outcome["rerun"] = _summary(again)
        converged = again is not None and not again.get("failed") and again.get("state") == "running"
        if fault.kills_the_guest(phase) and lab.domain_state("hv2", guest.name) == "shut off":
            # nothing can run a killed guest again but a start; the task must say so and change nothing
            said = (again or {}).get("msg") or ""
            converged = bool(again and again.get("failed") and "runs nowhere" in said and not again.get("changed"))
            converged = converged and lab.domain_state("hv2", guest.name) == "shut off"
        elif converged:
            lease_problems = lease_holders_agree(lab, guest, "hv2")
            converged = (
                lab.domain_state("hv2", guest.name) == "running"
                and not lease_problems
                and lab.domain_state("hv1", guest.name) in (None, "shut off")
            )
            if lease_problems:
                outcome["problems"].append("after the run again: " + "; ".join(lease_problems))
        if not converged:
            after = dict((h, lab.domain_state(h, guest.name)) for h in ("hv1", "hv2"))
            said = (
                "no result"
                if again is None
                else again.get("msg") or "ok, changed={}, state {}".format(again.get("changed"), again.get("state"))
            )
            outcome["problems"].append(
                "the same task run again did not converge ({}); then hv1 {}, hv2 {}".format(
                    said, after["hv1"], after["hv2"]
                )
            )
        outcome["converged"] = converged
        if outcome["problems"]:
            outcome["rerun_timeline"] = rerun_events.timeline(guest.name)
    finally:
        guest.remove()
    outcome["survived"] = outcome["injected"] and not outcome["problems"]
    outcome["lost"] = outcome.get("lost", False)
    return outcome


def _summary(result):
    if result is None:
        return None
    return {
        "failed": result.get("failed"),
        "changed": result.get("changed"),
        "msg": result.get("msg"),
        "state": result.get("state"),
        "checkpoints": [c["name"] for c in result.get("lock_checkpoints", [])],
    }


def check_invariants(lab, guest, watch, result, fault, outcome, ignore=()):
    problems = outcome["problems"]
    states = dict((h, lab.domain_state(h, guest.name)) for h in ("hv1", "hv2"))
    outcome["states"] = states
    running = [h for h, s in states.items() if s == "running"]
    msg = (result or {}).get("msg") or ""
    if watch.two_running():
        problems.append("two running copies: {}".format("; ".join(watch.two_running())))
    elif watch.possibly_two_running():
        outcome["notes"].append(
            "two running copies cannot be ruled out while an observer had lost libvirtd: {}".format(
                "; ".join(watch.possibly_two_running())
            )
        )
    if watch.sampled_two_running() and not watch.two_running():
        outcome["notes"].append(
            "{} of {} sequential state samples saw it running on both hosts, at no instant by the events".format(
                len(watch.sampled_two_running()), len(watch.states)
            )
        )
    if watch.two_holders(ignore):
        problems.append("the leases were held by two processes at once: {}".format(watch.two_holders(ignore)[0]))
    if len(running) > 1:
        problems.append("runs on both hosts")
    handed_over = (
        result is not None and not result.get("failed") and "finish/resumed" in (_summary(result)["checkpoints"])
    )
    if not running:
        paused = [h for h, s in states.items() if s == "paused"]
        killed_there = fault.kills_the_guest(outcome["phase"]) and states.get("hv2") == "shut off"
        if handed_over and states.get("hv2") == "shut off":
            outcome["notes"].append("the guest ran on hv2 (reported) and was killed after that: shut off there")
        elif killed_there and "hv2" in msg and any(w in msg for w in NOWHERE_WORDS):
            outcome["notes"].append("hv2 held the only copy when its QEMU was killed; the module said so")
        elif not paused:
            problems.append("the guest runs nowhere and is paused nowhere: {}".format(states))
            outcome["lost"] = True
        elif fault.interrupts:
            # the run was killed: it could report nothing; the task run again must finish the handoff
            outcome["notes"].append("left paused on {} by the interrupted run".format(paused))
        elif not any(w in msg for w in NOWHERE_WORDS):
            problems.append("the guest is paused on {} (runs nowhere) and the module did not say so".format(paused))
            outcome["lost"] = True
    if not any(s is not None for s in states.values()):
        problems.append("no host has the guest's definition")
        outcome["lost"] = True
    if running:
        problems.extend(lease_holders_agree(lab, guest, running[0]))
    for host in ("hv1", "hv2"):
        if states[host] == "shut off" and running and running[0] != host:
            outcome["notes"].append("a shut-off copy stays on {}".format(host))
            if result is not None and result.get("failed") and host not in msg:
                problems.append("a shut-off copy stays on {} and the failed run does not name it".format(host))
    if result is not None and result.get("failed") and not fault.interrupts:  # else the error is Ansible's
        if not any(msg.startswith(w + ":") or " {}:".format(w) in msg[:80] for w in PHASE_WORDS):
            problems.append("the error does not name its phase: {!r}".format(msg[:200]))
    elif result is None and not fault.interrupts:
        problems.append("the run ended without a result")
