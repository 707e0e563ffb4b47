"""Several migrations off one host (migrate_many): placement, limits, stopping, failure phases.

Each move runs in a forked child as the real engine does; here the child runs a fake migration that
records when it ran (in a file, since it is another process) and answers like lockstep.virt.migrate.
"""

import json
import os
import time

import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError, VirtError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.evacuation import (
    MIGRATE_MANY_ARGUMENT_SPEC,
    Evacuation,
    failure_phase,
    migrate_params,
    place,
)

MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------- place
def test_place_puts_the_largest_guest_first_on_the_freest_host_and_counts_what_it_placed():
    free = {"hv2": 1000, "hv3": 900}
    plan = place(
        [{"name": "a", "memory_mib": 100}, {"name": "b", "memory_mib": 300}, {"name": "c", "memory_mib": 200}], free
    )
    assert [(p["name"], p["dest"]) for p in plan] == [("b", "hv2"), ("c", "hv3"), ("a", "hv2")]
    # b: hv2 1000 -> 700; c: hv3 900 -> 700; a: tie 700/700 -> by name
    assert free == {"hv2": 600, "hv3": 700}
    assert plan[0]["reason"] == "most free memory (1000 MiB)"


def test_place_keeps_fixed_guests_and_strikes_refusing_hosts():
    free = {"hv2": 1000, "hv3": 100}
    plan = place(
        [{"name": "a", "memory_mib": 50}, {"name": "b", "memory_mib": 50}],
        free,
        fixed={"a": "hv3"},
        struck={"b": {"hv2"}},
    )
    assert [(p["name"], p["dest"], p["reason"]) for p in plan] == [
        ("a", "hv3", "placement"),
        ("b", "hv3", "most free memory (50 MiB)"),
    ]
    assert free == {"hv2": 1000, "hv3": 0}


def test_place_names_what_does_not_fit_and_honours_the_reserve():
    plan = place([{"name": "big", "memory_mib": 600}], {"hv2": 700}, reserve_mib=200)
    assert plan[0]["dest"] is None
    assert plan[0]["reason"] == "no destination has 800 MiB free"
    refused = place([{"name": "g", "memory_mib": 1}], {"hv2": 700}, struck={"g": {"hv2"}})
    assert refused[0]["reason"] == "no destination has 1 MiB free (refused by hv2)"


def test_failure_phase_tells_preflight_from_the_migration_phases():
    assert failure_phase({"checks": [{"name": "dest_network", "ok": False}], "lock_checkpoints": []}) == (
        "preflight",
        None,
    )
    send = {"lock_checkpoints": [{"name": "begin/inquire", "ok": True}, {"name": "perform/send", "ok": False}]}
    assert failure_phase(send) == ("perform", "perform/send")
    assert failure_phase({"msg": "cannot reach the destination qemu+ssh://x/system: no"}) == ("connect", None)


def test_migrate_params_are_the_migrate_modules_with_its_defaults_and_checks():
    params = migrate_params({"unsafe": True, "lock": {"acquire_timeout": 5}}, "g", "qemu+ssh://hv2/system", None)
    assert params["name"] == "g" and params["unsafe"] is True and params["live"] is True
    assert params["lock"] == {"release": "after_send", "verify": True, "acquire_timeout": 5}
    with pytest.raises(ValidationError, match="migrate options"):
        migrate_params({"mode": "sideways"}, "g", "qemu+ssh://hv2/system", None)


# ---------------------------------------------------------------------------------------------- the run
class FakeDomain:
    def __init__(self, name, mib, active=True):
        self._name, self.mib, self.active = name, mib, active

    def name(self):
        return self._name

    def info(self):
        return [1, self.mib * 1024, self.mib * 1024, 1, 0]

    def isActive(self):
        return self.active

    def state(self):
        return [1, 0]


class FakeVirt:
    def __init__(self, domains=(), free_mib=4096):
        self.domains = dict((d.name(), d) for d in domains)
        self.free_mib = free_mib

    def listAllDomains(self, flags=0):
        return [d for d in self.domains.values() if d.active]

    def getMemoryStats(self, cell, flags):
        raise RuntimeError("not supported")  # the fallback: getFreeMemory

    def getFreeMemory(self):
        return self.free_mib * MIB

    def lookupByName(self, name):
        if name not in self.domains:
            raise RuntimeError("no domain")
        return self.domains[name]


class FakeConn:
    def __init__(self, uri, host, virt):
        self.uri, self.hostname, self.virt = uri, host, virt
        self.closed = False

    def close(self):
        self.closed = True


class World:
    """A source with guests and destinations; opens fake connections by URI."""

    def __init__(self, guests, free):
        self.hosts = {"hv1": FakeVirt([FakeDomain(n, m) for n, m in guests])}
        for host, mib in free.items():
            self.hosts[host] = FakeVirt(free_mib=mib)
        self.opened = []

    def open_conn(self, uri):
        host = "hv1" if uri in (None, "qemu:///system") else uri.split("//")[1].split("/")[0]
        if host not in self.hosts:
            raise VirtError("cannot connect to " + uri, libvirt_message="unknown host " + host)
        conn = FakeConn(uri or "qemu:///system", host, self.hosts[host])
        self.opened.append(conn)
        return conn


def module_params(**kw):
    out = dict((k, v.get("default")) for k, v in MIGRATE_MANY_ARGUMENT_SPEC.items())
    out["uri"] = None
    out.update(kw)
    return out


def fake_migration(log, fail=None, refuse=None, seconds=0.2):
    """A migration that appends (guest, dest, start, end) to ``log`` and answers like lockstep.virt.migrate."""

    def run(params, check_mode):
        dest = params["dest_uri"].split("//")[1].split("/")[0]
        start = time.monotonic()
        if refuse and (params["name"], dest) in refuse:
            result = {"msg": "migration would fail: dest_network", "checks": [{"name": "dest_network", "ok": False}]}
            ok = False
        else:
            time.sleep(seconds)
            ok = params["name"] != fail
            checkpoints = [{"name": "begin/inquire", "ok": True}, {"name": "perform/send", "ok": ok}]
            result = {"changed": ok and not check_mode, "dest": dest, "downtime_ms": 7, "lock_checkpoints": checkpoints}
            if not ok:
                result["msg"] = "send failed"
        with open(log, "a") as fh:
            fh.write(json.dumps([params["name"], dest, start, time.monotonic()]) + "\n")
        return ok, result

    return run


def runs(log):
    with open(log) as fh:
        return [json.loads(line) for line in fh]


def most_in_flight(spans):
    points = sorted([(s, 1, k) for k, s, _e in spans] + [(e, -1, k) for k, _s, e in spans])
    now = best = 0
    for _t, step, _k in points:
        now += step
        best = max(best, now)
    return best


def test_moves_every_guest_within_the_limits_and_reports_each(tmp_path):
    log = str(tmp_path / "log")
    world = World([("g%d" % i, 32) for i in range(6)], {"hv2": 1000, "hv3": 1000})
    params = module_params(destinations=["hv2", "hv3"], concurrency=3, concurrency_per_destination=2)
    result = Evacuation(params, run_one=fake_migration(log), open_conn=world.open_conn).run()
    assert result["changed"] is True and result["stopped"] is False
    assert [g["state"] for g in result["guests"]] == ["moved"] * 6
    assert sorted(g["dest"] for g in result["guests"]) == ["hv2"] * 3 + ["hv3"] * 3
    assert all(g["downtime_ms"] == 7 and g["elapsed_s"] > 0 for g in result["guests"])
    done = runs(log)
    assert sorted(r[0] for r in done) == ["g%d" % i for i in range(6)]
    assert most_in_flight([(r[0], r[2], r[3]) for r in done]) <= 3
    for dest in ("hv2", "hv3"):
        assert most_in_flight([(r[0], r[2], r[3]) for r in done if r[1] == dest]) <= 2
    assert all(conn.closed for conn in world.opened)


def test_first_failure_stops_new_moves_and_names_its_phase(tmp_path):
    log = str(tmp_path / "log")
    world = World([("a", 64), ("b", 32), ("c", 16)], {"hv2": 1000})
    params = module_params(destinations=["hv2"], concurrency=1)
    with pytest.raises(VirtError) as err:
        Evacuation(params, run_one=fake_migration(log, fail="a"), open_conn=world.open_conn).run()
    result = err.value.result
    states = dict((g["name"], (g["state"], g.get("phase"), g.get("failed_at"))) for g in result["guests"])
    assert states == {
        "a": ("failed", "perform", "perform/send"),
        "b": ("not_started", None, None),
        "c": ("not_started", None, None),
    }
    assert result["stopped"] is True
    assert [r[0] for r in runs(log)] == ["a"]
    assert "a (perform: send failed)" in err.value.msg


def test_continue_on_error_moves_the_others(tmp_path):
    log = str(tmp_path / "log")
    world = World([("a", 64), ("b", 32)], {"hv2": 1000})
    params = module_params(destinations=["hv2"], concurrency=1, continue_on_error=True)
    with pytest.raises(VirtError) as err:
        Evacuation(params, run_one=fake_migration(log, fail="a"), open_conn=world.open_conn).run()
    assert [g["state"] for g in err.value.result["guests"]] == ["failed", "moved"]


def test_a_destination_whose_preflight_refuses_is_struck_and_the_guest_placed_again(tmp_path):
    log = str(tmp_path / "log")
    world = World([("a", 32)], {"hv2": 2000, "hv3": 1000})
    params = module_params(destinations=["hv2", "hv3"])
    result = Evacuation(params, run_one=fake_migration(log, refuse={("a", "hv2")}), open_conn=world.open_conn).run()
    [guest] = result["guests"]
    assert guest["state"] == "moved" and guest["dest"] == "hv3"
    assert [(a["dest"], a["ok"], a.get("phase")) for a in guest["attempts"]] == [
        ("hv2", False, "preflight"),
        ("hv3", True, None),
    ]
    assert "after hv2 refused it" in guest["reason"]


def test_a_plan_that_cannot_place_every_guest_moves_none(tmp_path):
    log = str(tmp_path / "log")
    world = World([("big", 4096), ("small", 32)], {"hv2": 1000})
    with pytest.raises(VirtError) as err:
        Evacuation(module_params(destinations=["hv2"]), run_one=fake_migration(log), open_conn=world.open_conn).run()
    states = dict((g["name"], (g["state"], g.get("phase"))) for g in err.value.result["guests"])
    assert states == {"big": ("failed", "placement"), "small": ("not_started", None)}
    assert not os.path.exists(log)


def test_check_mode_runs_the_preflight_of_each_guest_and_moves_nothing(tmp_path):
    log = str(tmp_path / "log")
    world = World([("a", 32), ("b", 32)], {"hv2": 1000, "hv3": 1000})
    params = module_params(destinations=["hv2", "hv3"], placement={"b": "hv3"})
    result = Evacuation(params, check_mode=True, run_one=fake_migration(log), open_conn=world.open_conn).run()
    assert [(g["name"], g["state"], g["dest"]) for g in result["guests"]] == [
        ("b", "would_move", "hv3"),
        ("a", "would_move", "hv2"),
    ]
    assert [p["order"] for p in result["plan"]] == [1, 2]
    assert result["guests"][0]["runs_on"] == ["hv1"]


def test_nothing_to_move_is_no_change(tmp_path):
    world = World([], {"hv2": 1000})
    result = Evacuation(module_params(destinations=["hv2"]), run_one=None, open_conn=world.open_conn).run()
    assert result["changed"] is False and result["guests"] == []


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"destinations": []}, "no destinations"),
        ({"concurrency": 0}, "concurrency must be at least 1"),
        ({"migrate": {"name": "x"}}, "migrate: name is set for each guest"),
        ({"dest_uri": "qemu+ssh://hv2/system"}, "must contain {host}"),
        ({"destinations": ["hv1"]}, "include the host being evacuated"),
        ({"migrate": {"mode": "sideways"}}, "migrate options"),
    ],
)
def test_bad_input_is_refused_before_anything_moves(tmp_path, kw, message):
    world = World([("a", 32)], {"hv2": 1000})
    params = module_params(**dict({"destinations": ["hv2"]}, **kw))
    with pytest.raises(ValidationError, match=message):
        Evacuation(params, run_one=None, open_conn=world.open_conn).run()
