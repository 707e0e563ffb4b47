# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Building blocks of the verified migration handoff (used by managers/migration.py).

- :data:`MIGRATE_ARGUMENT_SPEC` and :func:`build_plan`: options -> libvirt flags and parameters, checked
  against the source's driver profile (libxl accepts a subset) before anything is touched.
- :class:`LeaseView`: the guest's lease resources, probed from the source host, each classified as held
  by the ``source`` (this host's virtlockd), by ``other`` (another holder: the destination's virtlockd
  once it resumed) or not held.
- :class:`PhaseRecorder`: lets :class:`Lifecycle` record into the migration's checkpoint list under
  ``phase/name`` names.
- :class:`LifecycleEvents`: libvirt domain lifecycle events from both connections, timestamped by a
  libvirt event loop thread (gives ``downtime_ms`` and ``lease_gap_ms``).
"""

from __future__ import annotations

import threading
import time

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import utc_now
from ansible_collections.lockstep.virt.plugins.module_utils._virt.convergence import (
    CONVERGENCE_OPTIONS,
    validate_convergence,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    describe_holder,
    domain_lease_resources,
    probe_resources,
    public_lease,
    virtlockd_pids,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import parse_xml

RELEASE_AFTER_SEND = "after_send"
RELEASE_BEFORE_SEND = "before_send"
MODES = ("peer2peer", "direct", "tunnelled")
COPY_STORAGE = {"none": None, "all": "NON_SHARED_DISK", "incremental": "NON_SHARED_INC"}
# Flags a user may add that no other option controls.
EXTRA_FLAGS = ("ABORT_ON_ERROR", "CHANGE_PROTECTION", "TLS", "TUNNELLED", "PEER2PEER", "NON_SHARED_SYNCHRONOUS_WRITES")

MIGRATE_LOCK_OPTIONS = {
    "release": {"type": "str", "choices": [RELEASE_AFTER_SEND, RELEASE_BEFORE_SEND], "default": RELEASE_AFTER_SEND},
    "verify": {"type": "bool", "default": True},
    "acquire_timeout": {"type": "int", "default": 30},
}

MIGRATE_ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "dest_uri": {"type": "str", "required": True},
    "live": {"type": "bool", "default": True},
    "mode": {"type": "str", "choices": list(MODES), "default": "peer2peer"},
    "persistent": {"type": "bool", "default": True},
    "undefine_source": {"type": "bool", "default": True},
    "copy_storage": {"type": "str", "choices": list(COPY_STORAGE), "default": "none"},
    "bandwidth": {"type": "int"},
    "max_downtime": {"type": "int"},
    "auto_converge": {"type": "bool", "default": False},
    "postcopy": {"type": "int"},
    "compressed": {"type": "bool", "default": False},
    "parallel_connections": {"type": "int"},
    "unsafe": {"type": "bool", "default": False},
    "timeout": {"type": "int"},
    "extra_flags": {"type": "list", "elements": "str", "choices": list(EXTRA_FLAGS), "default": []},
    "lock": {
        "type": "dict",
        "default": {},
        "options": MIGRATE_LOCK_OPTIONS,
        "apply_defaults": True,
    },
    "convergence": {"type": "dict", "options": CONVERGENCE_OPTIONS},
}

# Typed parameters (migrateToURI3/migrate3) each driver accepts from this module; the test driver
# accepts what qemu does (its profile allows every migration flag too).
_QEMU_PARAMS = (
    "bandwidth",
    "parallel.connections",
    "max_downtime",
    "postcopy",
    "convergence",
    "auto_converge.initial",
    "auto_converge.increment",
)
_PARAMS_BY_PROFILE = {"qemu": _QEMU_PARAMS, "test": _QEMU_PARAMS}


def _positive(params, key):
    value = params.get(key)
    if value is not None and value <= 0:
        raise ValidationError("{} must be a positive number, not {}".format(key, value))
    return value


def build_plan(params, profile):
    """What the migration will do: flag names and value, typed parameters, handoff style.

    Raises ValidationError for contradictory options or flags the driver does not accept; nothing has
    been touched then.
    """
    lock = params.get("lock") or {}
    release = lock.get("release") or RELEASE_AFTER_SEND
    live = params.get("live", True)
    mode = params.get("mode") or "peer2peer"
    postcopy = _positive(params, "postcopy")
    for key in ("bandwidth", "max_downtime", "parallel_connections", "timeout"):
        _positive(params, key)
    if postcopy is not None and not live:
        raise ValidationError("postcopy needs a live migration: set live: true or drop postcopy")
    if postcopy is not None and release == RELEASE_BEFORE_SEND:
        raise ValidationError("postcopy cannot be combined with lock.release: before_send (the source is paused)")
    acquire_timeout = lock.get("acquire_timeout", 30)
    if acquire_timeout is not None and acquire_timeout < 0:
        raise ValidationError("lock.acquire_timeout must be 0 or more")
    conv = params.get("convergence")
    if conv is not None:
        if conv.get("timeout_action") == "postcopy" and not live:
            raise ValidationError(
                "convergence.timeout_action: postcopy needs a live migration: set live: true or choose abort or pause"
            )
        validate_convergence(conv, live=live)
        if params.get("max_downtime"):
            raise ValidationError(
                "max_downtime and convergence both set the allowed downtime: use convergence.max_downtime"
            )
        if postcopy is not None:
            raise ValidationError(
                "postcopy and convergence both switch to post-copy: use convergence.timeout_action: postcopy"
            )
        if release == RELEASE_BEFORE_SEND:
            raise ValidationError(
                "convergence cannot be combined with lock.release: before_send (the source is paused before the copy)"
            )
        postcopy_flag = conv.get("timeout_action") == "postcopy"
    else:
        postcopy_flag = postcopy is not None

    names = []
    if live:
        names.append("LIVE")
    if mode == "peer2peer":
        names.append("PEER2PEER")
    elif mode == "tunnelled":
        names += ["PEER2PEER", "TUNNELLED"]
    for flag in params.get("extra_flags") or []:
        flag = flag.upper()
        if flag not in names:
            names.append(flag)
    if "PEER2PEER" in names and mode == "direct":
        raise ValidationError("extra_flags PEER2PEER contradicts mode: direct; use mode: peer2peer")
    if params.get("persistent", True):
        names.append("PERSIST_DEST")
    if params.get("undefine_source", True):
        names.append("UNDEFINE_SOURCE")
    copy = COPY_STORAGE[params.get("copy_storage") or "none"]
    if copy:
        names.append(copy)
    if params.get("auto_converge") or (conv or {}).get("auto_converge"):
        names.append("AUTO_CONVERGE")
    if params.get("compressed"):
        names.append("COMPRESSED")
    if params.get("parallel_connections"):
        names.append("PARALLEL")
    if params.get("unsafe"):
        names.append("UNSAFE")
    if postcopy_flag:
        names.append("POSTCOPY")
    # The verified handoff: the destination stays paused (and, with qemu, holds no lease) until the
    # module has checked the source released everything. Post-copy runs the guest on the destination
    # as soon as it switches, so libvirt refuses PAUSED with it ("post-copy migration is not supported
    # with non-live or paused migration"): the handoff is then libvirt's own, verified afterwards.
    handoff = "libvirt_postcopy" if postcopy_flag else "verified"
    if handoff == "verified":
        names.append("PAUSED")
    if "TUNNELLED" in names and "PEER2PEER" not in names:
        raise ValidationError(
            "a tunnelled migration needs peer-to-peer: use mode: tunnelled (not TUNNELLED with mode: direct)"
        )
    value = profile.migration_flags_value(names)  # illegal flags and TUNNELLED without PEER2PEER refused here

    typed = {}
    wanted_params = []
    if params.get("bandwidth"):
        typed["bandwidth"] = params["bandwidth"]
        wanted_params.append("bandwidth")
    if params.get("parallel_connections"):
        typed["parallel.connections"] = params["parallel_connections"]
        wanted_params.append("parallel.connections")
    if params.get("max_downtime"):
        wanted_params.append("max_downtime")
    if postcopy is not None:
        wanted_params.append("postcopy")
    if conv is not None:
        wanted_params.append("convergence")
        for key in ("initial", "increment"):
            if conv.get("auto_converge_" + key) is not None:
                typed["auto_converge." + key] = conv["auto_converge_" + key]
                wanted_params.append("auto_converge." + key)
    allowed = _PARAMS_BY_PROFILE.get(profile.name, ())
    refused = [p for p in wanted_params if p not in allowed]
    if refused:
        raise ValidationError(
            "option(s) {} not supported by the {} driver".format(
                ", ".join(p.replace("parallel.connections", "parallel_connections") for p in refused), profile.name
            )
        )
    return {
        "mode": mode,
        "api": "migrate3" if mode == "direct" else "migrateToURI3",
        "flags": names,
        "flags_value": value,
        "params": typed,
        "max_downtime": params.get("max_downtime"),
        "postcopy_after": postcopy,
        "convergence": conv,
        "timeout": params.get("timeout"),
        "release": release,
        "handoff": handoff,
        "verify": lock.get("verify", True),
        "acquire_timeout": acquire_timeout or 0,
        "leases_taken": profile.leases_taken,
        "driver": profile.name,
    }


def checkpoint_order(release=RELEASE_AFTER_SEND, handoff="verified"):
    """The checkpoint names of a successful migration, in order (documented in the module)."""
    if release == RELEASE_BEFORE_SEND:
        return [
            "begin/inquire",
            "perform/source_paused",
            "perform/source_released",
            "prepare/register",
            "perform/send",
            "finish/dest_acquired",
            "finish/resumed",
            "confirm/source_stopped",
        ]
    return [
        "begin/inquire",
        "prepare/register",
        "perform/send",
        "perform/source_released",
        "finish/dest_acquired",
        "finish/resumed",
        "confirm/source_stopped",
    ]


# --------------------------------------------------------------------------- leases
def _process_name(pid):
    try:
        with open("/proc/{}/comm".format(pid)) as fh:
            return fh.read().strip()
    except (OSError, TypeError):
        return None


class LeaseView:
    """A guest's leases as seen from the source host.

    Lease names come from the source's lock configuration: a lockspace shared between hosts has the
    same paths everywhere (it must, or the hosts would not protect each other). ``holder`` is
    ``source`` (the source's virtlockd), ``other`` (any other holder: after the destination resumed,
    its virtlockd) or None.
    """

    def __init__(self, lock_config, here_pids=None, resolve_volume=None):
        self.lock_config = lock_config
        self.here_pids = (
            set(here_pids)
            if here_pids is not None
            else (virtlockd_pids() if lock_config is not None and lock_config.probeable else set())
        )
        self.resolve_volume = resolve_volume

    @property
    def probeable(self):
        return self.lock_config is not None and self.lock_config.probeable

    def expected(self, xml_text):
        root = parse_xml(xml_text, "domain", "libvirt's domain XML")
        return [r for r in domain_lease_resources(root, self.lock_config, self.resolve_volume) if r["resource"]]

    def probe(self, resources):
        out = []
        for r in probe_resources(resources, self.lock_config, here_pids=self.here_pids):
            if r.get("held_here"):
                r["holder"] = "source"
            elif r.get("held"):
                r["holder"] = "other"
            else:
                r["holder"] = None
            out.append(r)
        return out


def lease_summary(probed):
    """Compact per-checkpoint form: [{resource, kind, held, holder, holder_pid, holder_process}]."""
    out = []
    for r in probed:
        out.append(
            {
                "resource": r["resource"],
                "kind": r["kind"],
                "held": r.get("held"),
                "holder": r.get("holder"),
                "holder_pid": r.get("holder_pid"),
                "holder_process": _process_name(r["holder_pid"]) if r.get("holder_pid") else None,
            }
        )
    return out


def public_leases(probed):
    out = []
    for r in probed:
        p = public_lease(r)
        p["holder"] = r.get("holder")
        out.append(p)
    return out


def holders(probed):
    """Distinct holders ("source"/"other") of the held leases."""
    return sorted(set(r["holder"] for r in probed if r.get("holder")))


def describe(probed, source, dest):
    """Human text: who holds what, naming hosts."""
    parts = []
    for r in probed:
        who = describe_holder(r)
        if r.get("holder") == "source":
            who = "held by {}'s virtlockd (pid {})".format(source, r.get("holder_pid"))
        elif r.get("holder") == "other":
            proc = _process_name(r.get("holder_pid"))
            who = "held by pid {}{}, not {}'s virtlockd".format(
                r.get("holder_pid"), " ({})".format(proc) if proc else "", source
            )
        name = r.get("key") or r.get("disk") or r["resource"]
        parts.append("{} {} ({}): {}".format(r["kind"], name, r["resource"], who))
    return "; ".join(parts) if parts else "no leases"


# --------------------------------------------------------------------------- checkpoints
class PhaseRecorder:
    """Adapter giving Lifecycle a recorder whose checkpoint names become ``phase/name``.

    ``names`` maps Lifecycle's names to ours; a name mapped to None is not recorded.
    """

    def __init__(self, recorder, phase, names=None, host=None):
        self.recorder = recorder
        self.phase = phase
        self.names = dict(names or {})
        self.host = host

    def record(self, name, ok=True, resources=None, detail=None, host=None):
        mapped = self.names.get(name, name)
        if mapped is None:
            return None
        return self.recorder.record(
            "{}/{}".format(self.phase, mapped), ok=ok, resources=resources, detail=detail, host=host or self.host
        )

    def last(self):
        return self.recorder.last()


# --------------------------------------------------------------------------- events
EVENT_NAMES = {
    0: "defined",
    1: "undefined",
    2: "started",
    3: "suspended",
    4: "resumed",
    5: "stopped",
    6: "shutdown",
    7: "pmsuspended",
    8: "crashed",
}
_EVENT_LOOP = {"started": False, "ok": False}
_EVENT_LOCK = threading.Lock()


def start_event_loop():
    """Register libvirt's default event loop and run it in a daemon thread (once per process).

    Must run before the connections are opened. Returns False when events are unavailable.
    """
    with _EVENT_LOCK:
        if _EVENT_LOOP["started"]:
            return _EVENT_LOOP["ok"]
        _EVENT_LOOP["started"] = True
        if libvirt is None:
            return False
        try:
            libvirt.virEventRegisterDefaultImpl()
            # a periodic timer makes each loop iteration return, so the thread never blocks forever
            libvirt.virEventAddTimeout(200, lambda *_a: None, None)
        except Exception:
            return False

        def run():
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:
                    time.sleep(0.2)

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _EVENT_LOOP["ok"] = True
        return True


class LifecycleEvents:
    """Lifecycle events of one guest on several connections, each with monotonic and UTC arrival times.

    ``on_event(role, event, detail, item)`` (optional) runs in the event thread.
    """

    def __init__(self, name, clock=time.monotonic, on_event=None):
        self.name = name
        self.clock = clock
        self.on_event = on_event
        self.items = []
        self._ids = []
        self._lock = threading.Lock()
        self.available = False

    def watch(self, conn, role):
        if not _EVENT_LOOP["ok"] or libvirt is None:
            return False

        def callback(_conn, dom, event, detail, _opaque):
            try:
                if dom.name() != self.name:
                    return
            except Exception:
                return
            item = {
                "role": role,
                "event": EVENT_NAMES.get(event, str(event)),
                "detail": detail,
                "t": self.clock(),
                "at": utc_now(),
            }
            with self._lock:
                self.items.append(item)
            if self.on_event is not None:
                try:
                    self.on_event(role, item["event"], detail, item)
                except Exception:
                    pass

        try:
            cid = conn.virt.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, None)
        except Exception:
            return False
        self._ids.append((conn, cid))
        self.available = True
        return True

    def first(self, role, event, detail=None, after=None):
        with self._lock:
            for item in self.items:
                if item["role"] == role and item["event"] == event and (detail is None or item["detail"] == detail):
                    if after is None or item["t"] >= after:
                        return item
        return None

    def wait_for(self, role, event, detail=None, timeout=2.0, after=None, sleep=time.sleep):
        deadline = self.clock() + timeout
        while True:
            found = self.first(role, event, detail, after)
            if found or not self.available or self.clock() >= deadline:
                return found
            sleep(0.02)

    def as_list(self):
        with self._lock:
            return [{"role": i["role"], "event": i["event"], "detail": i["detail"], "at": i["at"]} for i in self.items]

    def close(self):
        for conn, cid in self._ids:
            try:
                conn.virt.domainEventDeregisterAny(cid)
            except Exception:
                pass
        self._ids = []


def job_summary(stats):
    """The job figures returned to users from libvirt's completed-job statistics."""
    if not stats:
        return {}
    return {
        "elapsed_ms": stats.get("time_elapsed"),
        "downtime_ms": stats.get("downtime"),
        "data_total": stats.get("data_total"),
        "data_processed": stats.get("data_processed"),
        "memory_iterations": stats.get("memory_iteration"),
        "memory_bps": stats.get("memory_bps"),
        "setup_ms": stats.get("setup_time"),
    }


def ms_between(start, end):
    if start is None or end is None:
        return None
    return max(0, int(round((end - start) * 1000)))
