"""Where a guest ran, from libvirt's own lifecycle events on every host: the observer the tests and
benchmarks judge a migration by, independent of the code under test.

``EventObserver(lab, hosts, names)`` runs tests/lab/observer.py inside each host's namespaces and
collects its JSON lines; ``Timeline`` (its base, usable on recorded lines alone) turns them into running
intervals, overlaps (two hosts running one name at the same instant) and a migration's guest-visible pause.
All times are CLOCK_MONOTONIC seconds, one clock for every lab host (see tests/lab/observer.py).

A host runs a name from a state read (``initial`` / ``resync``) or event that says it runs - ``started``
(but not ``started/migrated``: that is the destination's incoming copy, paused until it is resumed) or
``resumed`` - until ``suspended``, ``stopped``, ``shutdown``, ``crashed`` or ``pmsuspended``. While an
observer's connection to libvirtd is lost (the daemon killed or restarted) nothing is known: a running
interval that was open then ends when the connection was lost, and only *may* have gone on until the
state was read again; ``possible_intervals`` and ``possible_overlaps`` count such a gap as running.
"""

import json
import os
import subprocess
import threading
import time

from labkit import LAB, REPO

OBSERVER = os.path.join(REPO, "tests", "lab", "observer.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # the hosts' Python with python3-libvirt
RUNNING_STATES = ("running", "blocked")
STARTS = ("started", "resumed")
ENDS = ("suspended", "stopped", "shutdown", "crashed", "pmsuspended")


class ObserverError(AssertionError):
    pass


def _transition(record):
    """What an event says about running: True (runs), False (does not) or None (nothing)."""
    event = record.get("event")
    if event == "started":
        return record.get("detail") != "migrated"
    if event in STARTS:
        return True
    if event in ENDS:
        return False
    return None


def host_intervals(records, name):
    """(certain, possible) running intervals [(start, end or None)] of ``name`` in one host's records.

    ``records`` are that host's observer lines in the order they were printed; they are taken in order of
    ``t`` (a state read's ``t`` is just before the read, so an event printed after it may already be in it:
    the transitions are idempotent). Before the first state read nothing is judged. Across a lost connection
    the state read after it decides: running before, it may have run until that read; running after, it may
    have run since the loss; not running on either side, it is taken as not running in between (a start and
    a stop both in the gap are not seen).
    """
    certain, possible = [], []
    observed = False
    lost_at = None  # t of a lost connection not read again yet
    c_open = p_open = None  # start of the open certain / possible interval

    def known(runs, t):
        nonlocal c_open, p_open
        if runs and c_open is None:
            c_open = t
            if p_open is None:
                p_open = t
        elif not runs and c_open is not None:
            certain.append((c_open, t))
            possible.append((p_open, t))
            c_open = p_open = None

    ordered = sorted(enumerate(records), key=lambda ir: (ir[1]["t"], ir[0]))
    for _i, r in ordered:
        kind, t = r.get("kind"), r["t"]
        if kind in ("initial", "resync") and r.get("name") == name:
            runs = r.get("state") in RUNNING_STATES
            if lost_at is None:
                known(runs, t)
            elif runs:
                c_open = t
                if p_open is None:
                    p_open = lost_at
            elif p_open is not None:
                possible.append((p_open, t))
                p_open = None
            observed, lost_at = True, None
        elif kind == "lost" and observed and lost_at is None:
            lost_at = t
            if c_open is not None:
                certain.append((c_open, t))
                c_open = None
        elif kind == "event" and r.get("name") == name and observed and lost_at is None:
            runs = _transition(r)
            if runs is not None:
                known(runs, t)
    if c_open is not None:
        certain.append((c_open, None))
    if p_open is not None:
        possible.append((p_open, None))
    elif lost_at is not None:
        possible.append((lost_at, None))  # never read again: it may have started
    return certain, possible


def overlaps_of(intervals):
    """[(t_from, t_to or None, hosts)] where two or more hosts' intervals ({host: [(start, end)]}) overlap.

    Intervals that only touch (one ends at the instant the other starts) do not overlap.
    """
    points = []
    for host, ivs in intervals.items():
        for start, end in ivs:
            if end is not None and end <= start:
                continue
            points.append((start, 1, host))
            points.append((float("inf") if end is None else end, -1, host))
    points.sort(key=lambda p: (p[0], p[1]))  # an end before a start at the same instant
    active = {}
    out = []
    for i, (t, delta, host) in enumerate(points):
        active[host] = active.get(host, 0) + delta
        if not active[host]:
            del active[host]
        nxt = points[i + 1][0] if i + 1 < len(points) else None
        if len(active) > 1 and nxt is not None and nxt > t:
            hosts = tuple(sorted(active))
            t_to = None if nxt == float("inf") else nxt
            if out and out[-1][1] == t and out[-1][2] == hosts:
                out[-1] = (out[-1][0], t_to, hosts)
            else:
                out.append((t, t_to, hosts))
    return out


class Timeline:
    """Observer lines from several hosts, and what they say about one domain name."""

    def __init__(self, records=None):
        self._lock = threading.Lock()
        self._records = {}  # host -> [record] in the order printed
        for r in records or ():
            self.add(r["host"], r)

    def add(self, host, record):
        record = dict(record, host=host)
        with self._lock:
            self._records.setdefault(host, []).append(record)

    def records(self, host=None):
        with self._lock:
            if host is not None:
                return list(self._records.get(host, []))
            return dict((h, list(rs)) for h, rs in self._records.items())

    @property
    def hosts(self):
        with self._lock:
            return list(self._records)

    def events(self, name, host=None, since=None):
        """``name``'s lifecycle events, every host's (or ``host``'s), in order of ``t`` (from ``since`` on)."""
        out = []
        for h, rs in self.records().items():
            if host is not None and h != host:
                continue
            out += [
                r
                for r in rs
                if r.get("kind") == "event" and r.get("name") == name and (since is None or r["t"] >= since)
            ]
        return sorted(out, key=lambda r: r["t"])

    def running_intervals(self, name):
        """{host: [(start_t, end_t or None)]}: when each host certainly ran ``name`` (None: still runs)."""
        return dict((h, host_intervals(rs, name)[0]) for h, rs in self.records().items())

    def possible_intervals(self, name):
        """As ``running_intervals``, counting the time an observer lost libvirtd while it ran as running."""
        return dict((h, host_intervals(rs, name)[1]) for h, rs in self.records().items())

    def overlaps(self, name):
        """[(t_from, t_to or None, hosts)]: when two or more hosts certainly ran ``name`` at the same instant."""
        return overlaps_of(self.running_intervals(name))

    def possible_overlaps(self, name):
        """Overlaps that an observer's lost connection leaves possible (a superset of ``overlaps``)."""
        return overlaps_of(self.possible_intervals(name))

    def unobserved(self, host):
        """[(t_lost, t_back or None)]: when ``host``'s observer was not connected to libvirtd."""
        gaps, lost = [], None
        for r in sorted(self.records(host), key=lambda r: r["t"]):
            if r.get("kind") == "lost" and lost is None:
                lost = r["t"]
            elif r.get("kind") == "reconnected" and lost is not None:
                gaps.append((lost, r["t"]))
                lost = None
        if lost is not None:
            gaps.append((lost, None))
        return gaps

    def pause_ms(self, name, src, dst, since=None):
        """The guest-visible pause of a migration of ``name`` from ``src`` to ``dst``, in ms: from the source's
        last ``suspended`` before the destination's first ``resumed`` that follows one, to that ``resumed``.

        None when either event is missing (never an estimate from anything else).
        """
        suspended = [e["t"] for e in self.events(name, host=src, since=since) if e["event"] == "suspended"]
        for e in self.events(name, host=dst, since=since):
            if e["event"] != "resumed":
                continue
            before = [t for t in suspended if t <= e["t"]]
            if before:
                return (e["t"] - before[-1]) * 1000.0
        return None

    def timeline(self, name, since=None, origin=None):
        """``name``'s state reads and events on every host, and the observers' lost connections, one line each,
        ``t`` in ms from ``origin`` (default: the first line shown)."""
        rows = []
        for h, rs in self.records().items():
            for r in rs:
                if since is not None and r["t"] < since:
                    continue
                kind = r.get("kind")
                if kind in ("initial", "resync") and r.get("name") == name:
                    what = "{}: {}".format(kind, r.get("state") or "not defined")
                    if r.get("reason"):
                        what += " ({})".format(r["reason"])
                elif kind == "event" and r.get("name") == name:
                    what = "{}/{}".format(r["event"], r["detail"])
                elif kind in ("lost", "reconnected"):
                    what = "observer {} libvirtd".format("lost" if kind == "lost" else "reconnected to")
                else:
                    continue
                rows.append((r["t"], h, what))
        rows.sort()
        if not rows:
            return []
        zero = rows[0][0] if origin is None else origin
        return ["{:+10.1f} ms  {}  {}".format((t - zero) * 1000.0, h, what) for t, h, what in rows]


class EventObserver(Timeline):
    """One tests/lab/observer.py per lab host, inside its namespaces, for the duration of a ``with`` block.

    ``__enter__`` returns once every observer has printed its state reads and is ready (or raises
    ``ObserverError`` with its stderr); ``__exit__`` waits for the events still on their way (``settle``)
    and stops them.
    """

    def __init__(self, lab, hosts, names=None, ready_timeout=60):
        super().__init__()
        self.lab = lab
        self.watched = list(hosts)
        self.names = list(names or [])
        self.ready_timeout = ready_timeout
        self.procs = {}
        self.stderr = {}
        self._ready = {}
        self._threads = []
        self._last = time.monotonic()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        try:
            self.settle()
        finally:
            self.stop()

    def start(self):
        before = time.monotonic()
        for host in self.watched:
            self._ready[host] = threading.Event()
            self.stderr[host] = []
            proc = subprocess.Popen(
                [LAB, "exec", host, "--", SYSTEM_PYTHON, OBSERVER] + self.names,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            self.procs[host] = proc
            for target in (self._read_stdout, self._read_stderr):
                t = threading.Thread(target=target, args=(host, proc), daemon=True)
                t.start()
                self._threads.append(t)
        deadline = time.monotonic() + self.ready_timeout
        for host in self.watched:
            while not self._ready[host].wait(0.1):
                if self.procs[host].poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise ObserverError(
                        "the event observer on {} did not get ready: {}".format(host, "".join(self.stderr[host]))
                    )
        after = time.monotonic()
        for host in self.watched:
            ready = [r for r in self.records(host) if r.get("kind") == "ready"][0]
            # one CLOCK_MONOTONIC for every host, or the hosts' timestamps could not be compared
            if not before <= ready["t"] <= after:
                self.stop()
                raise ObserverError(
                    "{}'s observer clock reads {:.6f}, outside [{:.6f}, {:.6f}] here: not the same clock".format(
                        host, ready["t"], before, after
                    )
                )

    def _read_stdout(self, host, proc):
        for line in proc.stdout:
            self._last = time.monotonic()
            try:
                record = json.loads(line)
            except ValueError:
                self.stderr[host].append("unparsed: " + line)
                continue
            self.add(host, record)
            if record.get("kind") == "ready":
                self._ready[host].set()
        # ended without saying goodbye: what follows is not observed
        if not any(r.get("kind") == "bye" for r in self.records(host)):
            self.add(host, {"kind": "lost", "t": time.monotonic(), "reason": "observer ended"})

    def _read_stderr(self, host, proc):
        for line in proc.stderr:
            self.stderr[host].append(line)

    def settle(self, quiet=0.3, timeout=3.0):
        """Wait at least ``quiet`` seconds, and until no line came for ``quiet`` seconds (at most ``timeout``):
        libvirt delivers an event a little after the change, possibly after the call that made it returned."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            now = time.monotonic()
            if now - started >= quiet and now - self._last >= quiet:
                return
            time.sleep(0.05)

    def stop(self):
        for proc in self.procs.values():
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for t in self._threads:
            t.join(5)
