"""Fake hypervisors for the migration engine's unit tests: two hosts, their lock manager and events.

The fake follows what each libvirt driver does, with the lifecycle events libvirt sends:
- qemu (libvirt 9): Prepare creates the incoming guest paused, holding no lease (STARTED/migrated); the
  source's vCPUs stop for the final part of the copy and libvirt releases the source's leases right then
  (SUSPENDED/migrated), before the send completes; a send cancelled after that point resumes the source's
  vCPUs in QEMU without taking a lease back; Finish with VIR_MIGRATE_PAUSED leaves the destination paused
  holding no lease (SUSPENDED/paused); Confirm stops the source (STOPPED/migrated) some time later; a paused
  guest takes its leases when resumed (RESUMED).
- virtlockd and a shareable disk: libvirt adds it with VIR_LOCK_MANAGER_RESOURCE_SHARED and virtlockd takes
  a shared fcntl lock, one per host, kept while any guest on that host owns it (virlockspace.c keeps the
  owners); its release at the vCPU stop drops only the releasing guest's ownership; F_GETLK names one holder.
- libxl (after libvirt's "Fix lock manager lock ordering"): Prepare creates the guest without leases and
  starts a receive thread that restores it; the destination takes the leases when that restore finishes
  (Finish makes no lock call) and keeps them while it stays paused; Perform releases on the source only
  after a successful send; a failed send never reacquires.
"""

import threading
import time

import libvirt

from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import (
    utc_now,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import LockConfig
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.migration import MigrationManager
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.leaseview import classify
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.plan import (
    MIGRATE_ARGUMENT_SPEC,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.profiles import LIBXL, QEMU

RESOURCES = ["/ls/disk-hash", "/ls/g1-lease"]
SHARED = "/ls/quorum-hash"  # the lease file of a shareable disk
VIRTLOCKD = {"hv1": 101, "hv2": 202}
XML = (
    "<domain type='{type}'><name>g1</name><uuid>11111111-2222-3333-4444-555555555555</uuid>"
    "<devices><disk type='file' device='disk'><source file='/shared/g1.qcow2'/><target dev='vda'/></disk>"
    "</devices></domain>"
)


def params(**kw):
    out = {k: v.get("default") for k, v in MIGRATE_ARGUMENT_SPEC.items()}
    out["lock"] = {"release": "after_send", "verify": True, "acquire_timeout": 5}
    out.update(name="g1", dest_uri="xen+ssh://hv2/system", uri=None)
    for k, v in kw.items():
        if k == "lock":
            out["lock"] = dict(out["lock"], **v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------- fake hypervisors
def busy(resource):
    return libvirt.libvirtError("resource busy: Lockspace resource '{}' is locked".format(resource))


EV = {"defined": 0, "started": 2, "suspended": 3, "resumed": 4, "stopped": 5}


class World:
    def __init__(self, driver="libxl"):
        self.driver = driver
        self.profile = LIBXL if driver == "libxl" else QEMU
        self.locks = {}
        self.log = []
        self.hosts = {}
        self.fail_send = None  # None, "before_stop" or "after_stop"
        self.release_at_confirm = False  # a source that keeps its leases until Confirm
        self.confirm_delay = 0.2  # libvirt's Confirm runs while the destination may already resume
        self.stale_attempts = 0  # resumes on the destination refused before the stale holder goes
        self.stale_resource = RESOURCES[1]
        self.watchers = []
        # a shareable disk: {host: owners} of each host's virtlockd's one shared lock (None: no such disk)
        self.shares = None
        self.shared_only = False  # the guest's only lease is the shareable disk
        self.getlk_first = "hv1"  # whose shared lock F_GETLK names when both hosts hold one
        self.arrive_before_stop = False  # the destination reports arrival before the source's vCPUs stop
        self.in_callback = threading.local()
        self.probe_threads = []
        self.probes_in_callback = 0
        self.callback_seconds = []
        self.probe_delay = 0

    def exclusive(self):
        return [] if self.shared_only else RESOURCES

    def emit(self, host, event, detail):
        for w in self.watchers:
            w.deliver(host, event, detail)

    def acquire(self, host):
        for r in self.exclusive():
            if self.locks.get(r) not in (None, host):
                raise busy(r)
        for r in self.exclusive():
            self.locks[r] = host
        if self.shares is not None:  # a shared lock never conflicts with another shared one
            self.shares.setdefault(host, set()).add("g1")
        self.log.append("acquire@" + host)

    def release(self, host):
        for r in self.exclusive():
            if self.locks.get(r) == host:
                self.locks[r] = None
        if self.shares is not None:  # only g1's ownership goes: the lock stays for the host's other owners
            self.shares.get(host, set()).discard("g1")
        self.log.append("release@" + host)


class FakeEvents:
    """LifecycleEvents' interface, fed by the fake hypervisors as libvirt's event loop would be."""

    def __init__(self, world, name, clock=time.monotonic, on_event=None):
        self.world, self.name, self.clock, self.on_event = world, name, clock, on_event
        self.items, self.roles, self.available = [], {}, False
        world.watchers.append(self)

    def watch(self, conn, role):
        self.roles[conn.hostname] = role
        self.available = True
        return True

    def deliver(self, host, event, detail):
        role = self.roles.get(host)
        if role is None:
            return
        item = {"role": role, "event": event, "detail": detail, "t": self.clock(), "at": utc_now()}
        self.items.append(item)
        if self.on_event is not None:
            # libvirt's event thread: the callback runs here and must return quickly
            self.world.in_callback.active = True
            started = time.monotonic()
            try:
                self.on_event(role, event, detail, item)
            finally:
                self.world.callback_seconds.append(time.monotonic() - started)
                self.world.in_callback.active = False

    def first(self, role, event, detail=None, after=None):
        for i in self.items:
            if i["role"] == role and i["event"] == event and detail in (None, i["detail"]):
                if after is None or i["t"] >= after:
                    return i
        return None

    def as_list(self):
        return [dict((k, i[k]) for k in ("role", "event", "detail", "at")) for i in self.items]

    def close(self):
        self.world.watchers.remove(self)


class FakeDomain:
    def __init__(self, world, host, state="running", reason=None):
        self.world, self.host, self._state = world, host, state
        # libvirt's state reason (virDomain*Reason): booted, user-paused, shut down by default
        self.reason = reason if reason is not None else {"running": 1, "paused": 1}.get(state, 1)
        self.metadata_xml = None
        self.job_error = None  # the destination of an incoming migration refuses job statistics

    def name(self):
        return "g1"

    def UUIDString(self):
        return "11111111-2222-3333-4444-555555555555"

    def isActive(self):
        return self._state in ("running", "paused")

    def isPersistent(self):
        return True

    def jobInfo(self):
        if self.job_error is not None:
            raise self.job_error
        return [0] + [0] * 11

    def setMetadata(self, _type, xml, _key, _uri, _flags):
        self.metadata_xml = xml

    def metadata(self, _type, _uri, _flags):
        if self.metadata_xml is None:
            raise libvirt.libvirtError("metadata not found")
        return self.metadata_xml

    def state(self):
        return ({"running": 1, "paused": 3}.get(self._state, 5), self.reason)

    def set(self, state, reason):
        self._state, self.reason = state, reason

    def XMLDesc(self, _flags=0):
        return XML.format(type="xen" if self.world.driver == "libxl" else "qemu")

    def jobStats(self, _flags=0):
        return {"time_elapsed": 700, "downtime": 20, "data_total": 1000, "memory_iteration": 2}

    def destroy(self):
        self.set("shutoff", 2)  # VIR_DOMAIN_SHUTOFF_DESTROYED
        if self.world.driver == "qemu":
            self.world.release(self.host)
        self.world.log.append("destroy@" + self.host)

    def undefine(self):
        self.world.hosts[self.host].domains.pop("g1", None)

    def suspend(self):
        self.set("paused", 1)  # VIR_DOMAIN_PAUSED_USER
        if self.world.driver == "qemu":
            self.world.release(self.host)
        self.world.emit(self.host, "suspended", 0)

    def resume(self):
        w = self.world
        if self.host == "hv2" and w.stale_attempts > 0:
            w.stale_attempts -= 1
            w.locks[w.stale_resource] = "stale"
            raise busy(w.stale_resource)
        if w.locks.get(w.stale_resource) == "stale":
            w.locks[w.stale_resource] = None
        if w.driver == "qemu":
            w.acquire(self.host)
        self.set("running", 5)  # VIR_DOMAIN_RUNNING_UNPAUSED
        w.log.append("resume@" + self.host)
        w.emit(self.host, "resumed", 0)

    def migrateToURI3(self, uri, params, flags):
        w = self.world
        src, dst = w.hosts["hv1"], w.hosts["hv2"]
        w.log.append("begin")
        incoming = FakeDomain(w, "hv2", state="paused", reason=2)  # receiving: paused (migration)
        incoming.metadata_xml = self.metadata_xml
        dst.domains["g1"] = incoming
        w.log.append("prepare")
        w.emit("hv2", "started", 1)
        if w.fail_send == "before_stop":
            del dst.domains["g1"]  # finish(cancelled) kills the half-received guest: it held nothing
            w.log.append("perform_failed")
            raise libvirt.libvirtError("operation failed: migration out job: unexpectedly failed")
        if w.arrive_before_stop:
            w.emit("hv2", "suspended", 0)  # an arrival reported before the source stopped
            time.sleep(0.15)
        if w.driver == "qemu":
            # the vCPUs stop for the final part of the copy: libvirt releases the source's leases now
            self.set("paused", 2)  # VIR_DOMAIN_PAUSED_MIGRATION
            if not w.release_at_confirm:
                w.release("hv1")
            w.emit("hv1", "suspended", 1)
            if w.fail_send == "after_stop_left_paused":
                del dst.domains["g1"]  # the destination's libvirtd went away: libvirt leaves the source paused
                w.log.append("perform_failed")
                raise libvirt.libvirtError("internal error: client socket is closed")
            if w.fail_send == "after_stop":
                del dst.domains["g1"]
                self._state = "running"  # QEMU restarts the vCPUs itself; libvirt takes no lease back
                w.log.append("perform_failed")
                raise libvirt.libvirtError("operation failed: migration out job: canceled by client")
        else:
            self.set("paused", 2)
            w.release("hv1")  # libxl: only after a successful send
        w.log.append("perform")
        if w.driver == "libxl":
            w.acquire("hv2")  # finish: before unpausing, even when it stays paused
        if not flags & libvirt.VIR_MIGRATE_PAUSED:
            incoming.resume()
        else:
            incoming.set("paused", 1)  # Finish with VIR_MIGRATE_PAUSED: paused (user), SUSPENDED/paused
            w.emit("hv2", "suspended", 0)
        w.log.append("finish")
        time.sleep(w.confirm_delay)
        if w.release_at_confirm:
            w.release("hv1")
        self.set("shutoff", 4)  # VIR_DOMAIN_SHUTOFF_MIGRATED
        w.emit("hv1", "stopped", 3)
        if flags & libvirt.VIR_MIGRATE_UNDEFINE_SOURCE:
            del src.domains["g1"]
        w.log.append("confirm")


class FakeVirt:
    def __init__(self, host):
        self.host = host

    def getCapabilities(self):
        return "<capabilities><host><uuid>{}</uuid></host></capabilities>".format(self.host.uuid)

    def lookupByName(self, name):
        if name in self.host.domains:
            return self.host.domains[name]
        err = libvirt.libvirtError("Domain not found: no domain with matching name '{}'".format(name))
        err.err = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU, err.args[0], 2, None, None, None, 0, 0)
        raise err

    def networkLookupByName(self, name):
        raise libvirt.libvirtError("no network")

    def storagePoolLookupByName(self, name):
        raise libvirt.libvirtError("no pool")


class FakeConn:
    def __init__(self, world, name, uuid):
        self.world, self.hostname, self.uuid = world, name, uuid
        self.uri = "{}://{}/system".format("xen" if world.driver == "libxl" else "qemu", name)
        self.profile = world.profile
        self.local = True
        self.domains = {}
        self.virt = FakeVirt(self)
        world.hosts[name] = self

    def close(self):
        pass


class FakeView:
    def __init__(self, world):
        self.world = world

    def __call__(self, lock_config, resolve_volume=None, sharers=None):
        return self

    def expected(self, _xml):
        shared = {
            "kind": "disk",
            "resource": SHARED,
            "lockspace": "/ls",
            "disk": "vdb",
            "key": None,
            "path": "/shared/quorum.raw",
            "shared": True,
        }
        if self.world.shared_only:
            return [shared]
        return [
            {
                "kind": "disk",
                "resource": RESOURCES[0],
                "lockspace": "/ls",
                "disk": "vda",
                "key": None,
                "path": "/shared/g1.qcow2",
                "shared": False,
            },
            {
                "kind": "lease",
                "resource": RESOURCES[1],
                "lockspace": "/ls",
                "disk": None,
                "key": "g1-lease",
                "path": None,
                "shared": False,
            },
        ] + ([shared] if self.world.shares is not None else [])

    def probe(self, resources):
        w = self.world
        w.probe_threads.append(threading.current_thread().name)
        if getattr(w.in_callback, "active", False):
            w.probes_in_callback += 1
        if w.probe_delay:
            time.sleep(w.probe_delay)  # a slow shared filesystem
        out = []
        for r in resources:
            if r["resource"] == SHARED:
                # what probe_resources reads: F_GETLK names one host's shared lock; hv1's virtlockd's own
                # files show whether it holds one; the guests on hv1 sharing the disk besides g1
                holding = [h for h in ("hv1", "hv2") if w.shares.get(h)]
                named = w.getlk_first if w.getlk_first in holding else (holding[0] if holding else None)
                others = sorted(n for n in w.shares.get("hv1", ()) if n != "g1")
                r = dict(
                    r,
                    held=bool(holding),
                    held_here="hv1" in holding,
                    holder_pid=VIRTLOCKD.get(named),
                    lock="shared" if holding else None,
                    sharers=others,
                )
            else:
                holder = w.locks.get(r["resource"])
                r = dict(
                    r,
                    held=holder is not None,
                    held_here=holder == "hv1",
                    holder_pid=VIRTLOCKD.get(holder),
                    lock="exclusive" if holder else None,
                    sharers=[],
                )
            r["holder"] = classify(r)
            out.append(r)
        return out


def make_world(driver="libxl", where="hv1", same_uuid=False):
    w = World(driver)
    hv1 = FakeConn(w, "hv1", "uuid-1")
    hv2 = FakeConn(w, "hv2", "uuid-1" if same_uuid else "uuid-2")
    host = hv1 if where == "hv1" else hv2
    host.domains["g1"] = FakeDomain(w, where)
    w.locks = {r: where for r in RESOURCES}
    return w, hv1, hv2


def manager(w, check_mode=False, events=True, source_log=None, dest_config=None, **kw):
    def open_conn(uri):
        return w.hosts["hv2"] if uri and "hv2" in uri else w.hosts["hv1"]

    def read_config(profile, local=True):
        return LockConfig(manager="lockd", file_lockspace_dir="/ls", local=True)

    def read_dest_config(conn):
        assert conn is w.hosts["hv2"]
        return dest_config if dest_config is not None else LockConfig(manager="lockd", file_lockspace_dir="/ls")

    return MigrationManager(
        params(**kw),
        check_mode=check_mode,
        open_conn=open_conn,
        lease_view=FakeView(w),
        events=(lambda name, clock, on_event: FakeEvents(w, name, clock, on_event)) if events else None,
        sleep=lambda _s: time.sleep(0.001),
        read_config=read_config,
        source_log=source_log or (lambda name, since: None),
        read_dest_config=read_dest_config,
    )


def holders_at(result):
    return {
        c["name"]: sorted(set(x["holder"] for x in c.get("leases", []) if x["holder"]))
        for c in result["lock_checkpoints"]
    }


def names_of(result):
    return [c["name"] for c in result["lock_checkpoints"]]


def before(names, first, then):
    return names.index(first) < names.index(then)
