# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Several migrations off one host: placement, bounded parallelism, a report per guest.

Every migration is one run of the migrate module's engine, exactly as ``lockstep.virt.migrate`` runs it
(its options, validated by its argument spec, in; its documented result out), each in a child process of
its own (forked), so that migrations run side by side without sharing a connection or an event loop.
Nothing here moves a guest by itself.

Placement (:func:`place`): largest guest first, each to the destination with the most free memory that
can take it, the destination's free memory lowered by the guest's size as it is placed; a guest named in
``placement`` goes where it says. A destination whose preflight (the migrate engine's own checks: its
networks, pools and volumes, the leases) refuses a guest is struck for that guest and the guest is
placed again.
"""

from __future__ import annotations

import fnmatch
import json
import os
import select
import threading
import time
import traceback

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import utc_now
from ansible_collections.lockstep.virt.plugins.module_utils._virt.connection import Connection, merge_argument_spec
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    ValidationError,
    VirtError,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.migration import MigrationManager
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.plan import MIGRATE_ARGUMENT_SPEC

# Options of every migration that the evacuation sets itself.
_OWN_MIGRATE_OPTIONS = ("name", "dest_uri", "uri")

MIGRATE_MANY_ARGUMENT_SPEC = {
    "names": {"type": "list", "elements": "str"},
    "pattern": {"type": "str", "default": "*"},
    "destinations": {"type": "list", "elements": "str", "default": []},
    "dest_uri": {"type": "str", "default": "qemu+ssh://{host}/system"},
    "placement": {"type": "dict", "default": {}},
    "concurrency": {"type": "int", "default": 2},
    "concurrency_per_destination": {"type": "int", "default": 0},
    "continue_on_error": {"type": "bool", "default": False},
    "reserve_memory_mib": {"type": "int", "default": 0},
    "migrate": {"type": "dict", "default": {}},
}


def migrate_params(options, name, dest_uri, uri):
    """The migrate module's parameters for one guest, validated and with its defaults, or ValidationError."""
    raw = dict(options or {})
    raw.update(name=name, dest_uri=dest_uri, uri=uri)
    result = ArgumentSpecValidator(merge_argument_spec(MIGRATE_ARGUMENT_SPEC)).validate(raw)
    if result.error_messages:
        raise ValidationError("migrate options: " + "; ".join(result.error_messages))
    return result.validated_parameters


def run_migration(params, check_mode):
    """One migration (or its preflight in check mode) as lockstep.virt.migrate runs it: (ok, result)."""
    try:
        return True, MigrationManager(params, check_mode).run()
    except VirtError as err:
        return False, err.to_fail_kwargs()


# ---------------------------------------------------------------------------------------------- placement
def place(guests, free_mib, fixed=None, struck=None, reserve_mib=0):
    """Choose a destination for each guest.

    ``guests``: [{name, memory_mib}]; ``free_mib``: {dest: MiB free}, lowered in place as guests are placed;
    ``fixed``: {guest: dest}; ``struck``: {guest: set of dests that refused it}. Returns [{name, memory_mib,
    dest (None when none can take it), reason, free_before_mib}] in placement order: fixed first, then the
    largest guest first (ties by name).
    """
    fixed = fixed or {}
    struck = struck or {}
    order = sorted(guests, key=lambda g: (g["name"] not in fixed, -g["memory_mib"], g["name"]))
    out = []
    for g in order:
        name, size = g["name"], g["memory_mib"]
        if name in fixed:
            dest = fixed[name]
            before = free_mib.get(dest)
            reason = "placement"
        else:
            fits = [
                d
                for d in free_mib
                if d not in struck.get(name, ()) and free_mib[d] is not None and free_mib[d] - reserve_mib >= size
            ]
            fits.sort(key=lambda d: (-free_mib[d], d))
            dest = fits[0] if fits else None
            before = free_mib.get(dest) if dest else None
            if dest:
                reason = "most free memory ({} MiB)".format(before)
            else:
                tried = sorted(struck.get(name, ()))
                reason = "no destination has {} MiB free{}".format(
                    size + reserve_mib, " (refused by {})".format(", ".join(tried)) if tried else ""
                )
        if dest is not None and free_mib.get(dest) is not None:
            free_mib[dest] -= size
        out.append({"name": name, "memory_mib": size, "dest": dest, "reason": reason, "free_before_mib": before})
    return out


def failure_phase(result):
    """(phase, checkpoint) where a migrate result failed: ``preflight`` when its checks refused it before
    anything happened, else the phase of its first failed checkpoint (or its last one)."""
    checkpoints = result.get("lock_checkpoints") or []
    if any(not c.get("ok", True) for c in result.get("checks") or []) and not checkpoints:
        return "preflight", None
    for c in checkpoints:
        if not c.get("ok", True):
            return c["name"].split("/", 1)[0], c["name"]
    if checkpoints:
        return checkpoints[-1]["name"].split("/", 1)[0], checkpoints[-1]["name"]
    if (result.get("msg") or "").startswith("cannot reach the destination"):
        return "connect", None
    return "preflight", None


def untouched(result):
    """True when a failed migration stopped before its first step (nothing was done on any host)."""
    return not result.get("lock_checkpoints") and not result.get("changed")


def guest_summary(entry):
    """One line about a guest's move, for people."""
    where = ", ".join("{} ({})".format(h, s) for h, s in sorted(entry["where"].items())) or "nowhere"
    state = entry["state"]
    if state in ("moved", "would_move", "already_there"):
        text = {"moved": "moved to", "would_move": "would move to", "already_there": "already on"}[state]
        line = "{}: {} {}".format(entry["name"], text, entry["dest"])
        if state == "moved":
            line += " in {:.2f} s, paused {} ms".format(entry["elapsed_s"], entry.get("downtime_ms"))
        return line + "; runs on " + where
    if state == "not_started":
        return "{}: not started (an earlier move failed); runs on {}".format(entry["name"], where)
    return "{}: failed in {}{}: {}; runs on {}".format(
        entry["name"],
        entry.get("phase"),
        " ({})".format(entry["failed_at"]) if entry.get("failed_at") else "",
        entry.get("msg"),
        where,
    )


# ---------------------------------------------------------------------------------------------- children
class _Child:
    def __init__(self, pid, fd, entry, started):
        self.pid = pid
        self.fd = fd
        self.entry = entry
        self.started = started
        self.data = b""


def _fork(work):
    """Run ``work()`` (returning (ok, result)) in a child process; return (pid, fd of its JSON answer)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: answers on its pipe, never returns
        code = 0
        try:
            os.close(rfd)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1):  # the module's own stdout carries its JSON result: keep the child off it
                os.dup2(null, fd)
            try:
                ok, result = work()
            except BaseException:
                ok, result = False, {"msg": "the migration engine failed: " + traceback.format_exc()}
            data = json.dumps({"ok": ok, "result": result}, default=str).encode("utf-8")
            while data:
                data = data[os.write(wfd, data) :]
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    return pid, rfd


# ---------------------------------------------------------------------------------------------- the run
class Evacuation:
    """Move the running guests of ``params['uri']`` (matching ``names``/``pattern``) to ``destinations``.

    ``run_one(params, check_mode) -> (ok, result)`` runs one migration (the migrate engine by default) in a
    child process; ``open_conn(uri)`` opens a Connection (both injectable for tests).
    """

    def __init__(self, params, check_mode=False, run_one=run_migration, open_conn=Connection, clock=time.monotonic):
        self.params = params
        self.check_mode = check_mode
        self.run_one = run_one
        self.open_conn = open_conn
        self.clock = clock
        self.warnings = []
        self.src = None
        self.src_name = None
        self.dests = {}
        self.stopped = False

    # ------------------------------------------------------------------ input
    def _validate(self):
        p = self.params
        if p["concurrency"] < 1:
            raise ValidationError("concurrency must be at least 1 (got {})".format(p["concurrency"]))
        if p["concurrency_per_destination"] < 0:
            raise ValidationError("concurrency_per_destination must be 0 (no limit) or more")
        if p["reserve_memory_mib"] < 0:
            raise ValidationError("reserve_memory_mib must be 0 or more")
        own = sorted(set(p["migrate"]) & set(_OWN_MIGRATE_OPTIONS))
        if own:
            raise ValidationError(
                "migrate: {} is set for each guest by the evacuation itself; remove it".format(", ".join(own))
            )
        if "{host}" not in p["dest_uri"]:
            raise ValidationError("dest_uri must contain {{host}} (got {})".format(p["dest_uri"]))
        bad = sorted(str(k) for k, v in p["placement"].items() if not isinstance(v, str) or not v)
        if bad:
            raise ValidationError("placement: each guest needs a destination host name ({})".format(", ".join(bad)))
        dests = list(dict.fromkeys(list(p["destinations"]) + sorted(set(p["placement"].values()))))
        if not dests:
            raise ValidationError("no destinations: give destinations (or a placement for every guest)")
        # the migrate options are checked once here, before anything moves
        migrate_params(p["migrate"], "-", p["dest_uri"].replace("{host}", dests[0]), p.get("uri"))
        return dests

    def dest_uri(self, dest):
        return self.params["dest_uri"].replace("{host}", dest)

    # ------------------------------------------------------------------ facts
    def _guests(self):
        p = self.params
        out = []
        with libvirt_errors("cannot list the guests of {}".format(self.src.uri)):
            doms = self.src.virt.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            for dom in doms:
                name = dom.name()
                if p.get("names") and name not in p["names"]:
                    continue
                if not fnmatch.fnmatchcase(name, p["pattern"]):
                    continue
                out.append({"name": name, "memory_mib": dom.info()[1] // 1024})
        return sorted(out, key=lambda g: g["name"])

    @staticmethod
    def free_memory_mib(conn):
        """Free memory of a host in MiB: free, buffers and page cache (virNodeGetMemoryStats)."""
        try:
            stats = conn.virt.getMemoryStats(getattr(libvirt, "VIR_NODE_MEMORY_STATS_ALL_CELLS", -1), 0)
            kib = sum(stats.get(k, 0) for k in ("free", "buffers", "cached"))
            if kib:
                return kib // 1024
        except Exception:
            pass
        with libvirt_errors("cannot read the free memory of {}".format(conn.uri)):
            return conn.virt.getFreeMemory() // (1024 * 1024)

    def _open_dests(self, dests):
        """Connect to every destination at once (each may be an SSH handshake) and read its free memory."""
        free = {}
        unreachable = {}

        def one(dest):
            try:
                conn = self.open_conn(self.dest_uri(dest))
            except VirtError as err:
                unreachable[dest] = err.libvirt_message or err.msg
                return
            self.dests[dest] = conn
            try:
                free[dest] = self.free_memory_mib(conn)
            except VirtError as err:
                unreachable[dest] = err.libvirt_message or err.msg

        threads = [threading.Thread(target=one, args=(dest,)) for dest in dests]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return dict((d, free[d]) for d in dests if d in free), unreachable

    def _where(self, name):
        """{host: state} of every host with an active copy of ``name``."""
        out = {}
        for host, conn in [(self.src_name, self.src)] + sorted(self.dests.items()):
            try:
                dom = conn.virt.lookupByName(name)
                if dom.isActive():
                    state = dom.state()[0]
                    out[host] = "paused" if state == libvirt.VIR_DOMAIN_PAUSED else "running"
            except Exception:
                continue
        return out

    # ------------------------------------------------------------------ run
    def run(self):
        try:
            return self._run()
        finally:
            for conn in list(self.dests.values()) + [self.src]:
                if conn is not None:
                    conn.close()

    def _run(self):
        p = self.params
        started = self.clock()
        dests = self._validate()
        self.src = self.open_conn(p.get("uri"))
        self.src_name = self.src.hostname
        guests = self._guests()
        fixed = dict((g, d) for g, d in p["placement"].items() if g in set(x["name"] for x in guests))
        for g in sorted(set(p["placement"]) - set(fixed)):
            self.warnings.append("placement names {}, which does not run on {}".format(g, self.src_name))
        if self.src_name in dests or any(d in ("localhost",) for d in dests):
            raise ValidationError("the destinations include the host being evacuated ({})".format(self.src_name))
        free, unreachable = self._open_dests(dests) if guests else ({}, {})
        start_free = dict(free)
        struck = dict((g["name"], set(unreachable)) for g in guests)
        plan = place(guests, free, fixed, struck, p["reserve_memory_mib"])
        for entry, item in zip(plan, range(len(plan))):
            entry["order"] = item + 1
        entries = dict(
            (e["name"], dict(e, state="pending", attempts=[], runs_on=[], where={})) for e in plan
        )  # the report, by guest
        for name, dest in fixed.items():
            if dest in unreachable:
                entries[name].update(state="failed", phase="connect", msg=unreachable[dest])
        unplaced = [e for e in plan if e["dest"] is None]
        stopped = False
        if unplaced and not p["continue_on_error"]:
            for e in unplaced:
                entries[e["name"]].update(state="failed", phase="placement", msg=e["reason"])
            stopped = True  # a plan that cannot take every guest moves none of them
        else:
            for e in unplaced:
                entries[e["name"]].update(state="failed", phase="placement", msg=e["reason"])
        if any(e["state"] == "failed" for e in entries.values()) and not p["continue_on_error"]:
            stopped = True
        queue = [e["name"] for e in plan if entries[e["name"]]["state"] == "pending"] if not stopped else []
        self._schedule(queue, entries, free, struck, stopped, started)
        return self._result(plan, entries, start_free, unreachable, started)

    def _schedule(self, queue, entries, free, struck, stopped, started):
        p = self.params
        limit, per_dest = p["concurrency"], p["concurrency_per_destination"]
        running = {}  # fd -> _Child
        self.stopped = stopped
        while queue or running:
            # start what the limits allow, in plan order (a guest whose destination is full waits)
            while queue and len(running) < limit and not self.stopped:
                busy = {}
                for child in running.values():
                    busy[child.entry["dest"]] = busy.get(child.entry["dest"], 0) + 1
                ready = [n for n in queue if not per_dest or busy.get(entries[n]["dest"], 0) < per_dest]
                if not ready:
                    break
                name = ready[0]
                queue.remove(name)
                entry = entries[name]
                params = migrate_params(p["migrate"], name, self.dest_uri(entry["dest"]), p.get("uri"))
                entry["state"] = "moving"
                entry["started_s"] = round(self.clock() - started, 3)
                entry["started_at"] = utc_now()
                pid, fd = _fork(lambda params=params: self.run_one(params, self.check_mode))
                running[fd] = _Child(pid, fd, entry, self.clock())
            if not running:
                break
            ready_fds, _w, _x = select.select(list(running), [], [])
            for fd in ready_fds:
                child = running[fd]
                chunk = os.read(fd, 65536)
                if chunk:
                    child.data += chunk
                    continue
                os.close(fd)
                os.waitpid(child.pid, 0)
                del running[fd]
                self._finished(child, queue, entries, free, struck)

    def _finished(self, child, queue, entries, free, struck):
        p = self.params
        entry = child.entry
        elapsed = round(self.clock() - child.started, 3)
        try:
            answer = json.loads(child.data.decode("utf-8"))
        except ValueError:
            answer = {"ok": False, "result": {"msg": "the migration process ended without a result"}}
        ok, result = answer["ok"], answer["result"]
        attempt = {"dest": entry["dest"], "ok": ok, "elapsed_s": elapsed}
        entry["attempts"].append(attempt)
        entry["result"] = result
        if ok:
            entry.update(
                state=("would_move" if self.check_mode else ("moved" if result.get("changed") else "already_there")),
                elapsed_s=elapsed,
                downtime_ms=result.get("downtime_ms"),
                lease_gap_ms=result.get("lease_gap_ms"),
            )
            return
        phase, checkpoint = failure_phase(result)
        attempt.update(phase=phase, msg=result.get("msg"))
        name = entry["name"]
        if untouched(result) and phase in ("preflight", "connect") and name not in p["placement"]:
            # the destination refused it before anything was done: strike it, give the memory back, place again
            struck.setdefault(name, set()).add(entry["dest"])
            free[entry["dest"]] = free.get(entry["dest"], 0) + entry["memory_mib"]
            guest = {"name": name, "memory_mib": entry["memory_mib"]}
            [again] = place([guest], free, None, struck, p["reserve_memory_mib"])
            if again["dest"] is not None:
                entry.update(dest=again["dest"], reason=again["reason"] + "; after " + attempt["dest"] + " refused it")
                entry["state"] = "pending"
                queue.insert(0, name)
                return
        entry.update(state="failed", phase=phase, failed_at=checkpoint, msg=result.get("msg"), elapsed_s=elapsed)
        entry["downtime_ms"] = result.get("downtime_ms")
        if not p["continue_on_error"]:
            self.stopped = True

    def _result(self, plan, entries, start_free, unreachable, started):
        guests = []
        for e in plan:
            entry = entries[e["name"]]
            if entry["state"] == "pending":
                entry["state"] = "not_started"
            entry["where"] = self._where(entry["name"])
            entry["runs_on"] = sorted(h for h, s in entry["where"].items() if s == "running")
            entry["summary"] = guest_summary(entry)
            guests.append(entry)
        failed = [g for g in guests if g["state"] in ("failed", "not_started")]
        twice = [g["name"] for g in guests if len(g["where"]) > 1]
        nowhere = [g["name"] for g in guests if not g["where"]]
        result = {
            "changed": any(g["state"] in ("moved", "would_move") for g in guests),
            "source": self.src_name,
            "plan": [
                {
                    "order": g["order"],
                    "name": g["name"],
                    "memory_mib": g["memory_mib"],
                    "dest": g["dest"],
                    "reason": g["reason"],
                    "summary": "{}. {} ({} MiB) -> {}: {}".format(
                        g["order"], g["name"], g["memory_mib"], g["dest"] or "nowhere", g["reason"]
                    ),
                }
                for g in guests
            ],
            "guests": guests,
            "destinations": [
                {
                    "name": d,
                    "uri": self.dest_uri(d),
                    "free_mib": start_free.get(d),
                    "reachable": d not in unreachable,
                    "guests": [g["name"] for g in guests if g["dest"] == d],
                }
                for d in sorted(set(start_free) | set(unreachable))
            ],
            "elapsed_s": round(self.clock() - started, 3),
            "stopped": self.stopped,
        }
        if self.warnings:
            result["warnings"] = self.warnings
        problems = []
        if failed:
            problems.append(
                "not moved: "
                + "; ".join(
                    "{} ({}{})".format(
                        g["name"], g.get("phase") or "not started", ": " + g["msg"] if g.get("msg") else ""
                    )
                    for g in failed
                )
            )
        if twice:
            problems.append("active on more than one host: " + ", ".join(twice))
        if nowhere and not self.check_mode:
            problems.append("running nowhere: " + ", ".join(nowhere))
        if problems:
            raise VirtError("; ".join(problems), result=result)
        return result


__all__ = [
    "Evacuation",
    "MIGRATE_MANY_ARGUMENT_SPEC",
    "failure_phase",
    "guest_summary",
    "migrate_params",
    "place",
    "run_migration",
]
