"""Prints a lab host's domain lifecycle events as they happen, one JSON line each, for the tests and
benchmarks that judge a migration from outside the code under test.

Runs inside a host's namespaces, on the system Python with Debian's python3-libvirt:

    tests/lab/lab exec hv1 -- /usr/bin/python3 tests/lab/observer.py [--uri URI] [NAME ...]

It registers libvirt's default event loop, opens qemu:///system, registers a lifecycle callback (every
domain, or only the NAMEs given), then prints each watched domain's current state, a ready line, and one
line per lifecycle event, flushed at once:

    {"kind": "initial", "t": ..., "host": "hv1", "name": "g", "uuid": "...", "state": "running", "reason": "booted"}
    {"kind": "ready", "ready": true, "t": ..., "host": "hv1", "pid": 1234}
    {"kind": "event", "t": ..., "host": "hv1", "name": "g", "uuid": "...", "event": "suspended", "detail": "migrated"}

``state`` is null for a NAME the host does not have. ``t`` is ``time.monotonic()``: in the callback for an
event, just before the host is asked for a state. If the connection to libvirtd closes (the daemon
killed or restarted) it prints ``{"kind": "lost", ...}``, reconnects as soon as libvirtd answers again and
prints every watched domain's state then (``"kind": "resync"``, like ``initial``) and
``{"kind": "reconnected", ...}``: events in between are not seen. It exits cleanly on SIGTERM, SIGINT or
when its stdin closes, printing ``{"kind": "bye", ...}``.

The timestamps of observers on different lab hosts are comparable: the lab's hosts have their own network,
mount and UTS namespaces but share the machine's time namespace (``lab exec`` enters only those three; a
host process's /proc/PID/ns/time is the controller's), so CLOCK_MONOTONIC is one clock for all of them.
tests/integration/observe.py checks this each time it starts an observer: the ready line's ``t`` must fall
between the controller's clock read before the observer was started and after its ready line arrived.
An event's ``t`` is when this process's event loop ran the callback, shortly after libvirtd emitted it
(the same path on every host), not when QEMU changed state.
"""

import argparse
import json
import os
import select
import signal
import socket
import sys
import threading
import time

import libvirt

EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


def _names(prefix):
    """libvirt's constants VIR_..._<PREFIX>_<NAME> as {value: "name"} (the detail and reason names)."""
    return dict(
        (getattr(libvirt, k), k[len(prefix) :].lower())
        for k in dir(libvirt)
        if k.startswith(prefix) and not k.endswith("_LAST")
    )


# The detail constants share the event's name: VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED is "migrated" of "suspended".
DETAILS = dict((code, _names("VIR_DOMAIN_EVENT_{}_".format(name.upper()))) for code, name in EVENTS.items())
REASONS = {
    libvirt.VIR_DOMAIN_RUNNING: _names("VIR_DOMAIN_RUNNING_"),
    libvirt.VIR_DOMAIN_PAUSED: _names("VIR_DOMAIN_PAUSED_"),
    libvirt.VIR_DOMAIN_SHUTOFF: _names("VIR_DOMAIN_SHUTOFF_"),
    libvirt.VIR_DOMAIN_SHUTDOWN: _names("VIR_DOMAIN_SHUTDOWN_"),
    libvirt.VIR_DOMAIN_CRASHED: _names("VIR_DOMAIN_CRASHED_"),
}

HOST = socket.gethostname()
_out_lock = threading.Lock()


def emit(**fields):
    line = json.dumps(dict(fields, host=HOST)) + "\n"
    with _out_lock:
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            os._exit(0)  # the reader went away: nobody is listening


class Observer:
    def __init__(self, uri, names):
        self.uri = uri
        self.names = set(names)
        self.conn = None
        self.closed = threading.Event()

    def on_event(self, _conn, dom, event, detail, _opaque):
        t = time.monotonic()  # first: the callback's time is the event's time
        name = dom.name()
        if self.names and name not in self.names:
            return
        emit(
            kind="event",
            t=t,
            name=name,
            uuid=dom.UUIDString(),
            event=EVENTS.get(event, str(event)),
            detail=DETAILS.get(event, {}).get(detail, str(detail)),
        )

    def on_close(self, _conn, reason, _opaque):
        emit(kind="lost", t=time.monotonic(), reason=reason)
        self.closed.set()

    def connect(self, kind):
        """Open the connection, register the callbacks, then print every watched domain's state as ``kind``.

        The callbacks go first so no change falls between the state read and the first event; an event
        printed with a ``t`` after a state's ``t`` may already be in that state.
        """
        conn = libvirt.open(self.uri)
        conn.registerCloseCallback(self.on_close, None)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self.on_event, None)
        self.conn = conn
        self.closed.clear()
        if self.names:
            for name in sorted(self.names):
                self.print_state(kind, name)
        else:
            for dom in conn.listAllDomains(0):
                self.print_state(kind, dom.name(), dom)

    def print_state(self, kind, name, dom=None):
        t = time.monotonic()  # before the read: a change after this may or may not be in what it returns
        try:
            dom = dom or self.conn.lookupByName(name)
            state, reason = dom.state()
            uuid = dom.UUIDString()
        except libvirt.libvirtError:
            emit(kind=kind, t=t, name=name, uuid=None, state=None, reason=None)
            return
        emit(
            kind=kind,
            t=t,
            name=name,
            uuid=uuid,
            state=STATES.get(state, str(state)),
            reason=REASONS.get(state, {}).get(reason, str(reason)),
        )

    def reconnect(self):
        try:
            if self.conn is not None:
                self.conn.close()
        except libvirt.libvirtError:
            pass
        self.conn = None
        try:
            self.connect("resync")
        except libvirt.libvirtError:
            self.conn = None
            self.closed.set()
            return False
        emit(kind="reconnected", t=time.monotonic())
        return True


def run_event_loop():
    while True:
        libvirt.virEventRunDefaultImpl()


def main():
    parser = argparse.ArgumentParser(description="Print libvirt domain lifecycle events as JSON lines.")
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("names", nargs="*", help="domains to watch (default: all)")
    args = parser.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    signal.signal(signal.SIGINT, lambda *_a: stop.set())
    libvirt.registerErrorHandler(lambda *_a: None, None)  # errors are handled here, not printed by libvirt
    libvirt.virEventRegisterDefaultImpl()
    threading.Thread(target=run_event_loop, daemon=True).start()

    observer = Observer(args.uri, args.names)
    try:
        observer.connect("initial")
    except libvirt.libvirtError as exc:
        sys.stderr.write("observer on {}: cannot open {}: {}\n".format(HOST, args.uri, exc))
        return 1
    emit(kind="ready", ready=True, t=time.monotonic(), pid=os.getpid())

    stdin = sys.stdin.fileno()
    while not stop.is_set():
        try:
            readable, _w, _x = select.select([stdin], [], [], 0.1)
        except InterruptedError:
            continue
        if readable and not os.read(stdin, 4096):
            break  # stdin closed: the caller is done
        if observer.closed.is_set():
            observer.reconnect()
    emit(kind="bye", t=time.monotonic())
    try:
        if observer.conn is not None:
            observer.conn.close()
    except libvirt.libvirtError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
