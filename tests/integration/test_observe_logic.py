"""The event observer's bookkeeping (observe.py) on made-up observer lines: running intervals, overlaps,
a migration's pause and lost connections. No lab needed; tests/integration/test_observer.py runs the
observer itself on the lab."""

import pytest
from observe import Timeline, overlaps_of

G = "g1"


def initial(host, t, state, name=G):
    return {"kind": "initial", "host": host, "t": t, "name": name, "state": state, "reason": None}


def ev(host, t, event, detail, name=G):
    return {"kind": "event", "host": host, "t": t, "name": name, "event": event, "detail": detail}


def migration(src, dst, t_suspend, t_resume, start=0.0):
    """libvirt's events of a plain live migration: the destination's incoming copy starts paused, the source
    pauses at the switch-over, the destination resumes, the source stops."""
    return [
        initial(src, start, "running"),
        initial(dst, start, None),
        ev(dst, start + 1.0, "defined", "added"),
        ev(dst, start + 1.1, "started", "migrated"),
        ev(src, t_suspend, "suspended", "migrated"),
        ev(dst, t_resume, "resumed", "migrated"),
        ev(src, t_resume + 0.01, "stopped", "migrated"),
        ev(src, t_resume + 0.02, "undefined", "removed"),
    ]


def test_migration_intervals_pause_and_no_overlap():
    tl = Timeline(migration("hv1", "hv2", 5.0, 5.032))
    assert tl.running_intervals(G) == {"hv1": [(0.0, 5.0)], "hv2": [(5.032, None)]}
    assert tl.overlaps(G) == []
    assert tl.possible_overlaps(G) == []
    assert tl.pause_ms(G, "hv1", "hv2") == pytest.approx(32.0)
    assert tl.pause_ms(G, "hv2", "hv1") is None  # hv1 never resumed it


def test_incoming_copy_is_not_running():
    # started/migrated is the destination's paused incoming copy: the source still runs then
    tl = Timeline([initial("hv1", 0, "running"), initial("hv2", 0, None), ev("hv2", 1, "started", "migrated")])
    assert tl.running_intervals(G)["hv2"] == []
    assert tl.overlaps(G) == []


def test_destination_resumed_before_source_suspended_is_an_overlap():
    tl = Timeline(
        [
            initial("hv1", 0, "running"),
            initial("hv2", 0, None),
            ev("hv2", 1.0, "started", "migrated"),
            ev("hv2", 5.020, "resumed", "migrated"),
            ev("hv1", 5.050, "suspended", "migrated"),
            ev("hv1", 5.060, "stopped", "migrated"),
        ]
    )
    assert tl.overlaps(G) == [(5.020, 5.050, ("hv1", "hv2"))]
    # the destination's resume has no suspend of the source before it
    assert tl.pause_ms(G, "hv1", "hv2") is None


def test_pause_needs_both_events():
    records = [r for r in migration("hv1", "hv2", 5.0, 5.03) if r.get("event") != "suspended"]
    tl = Timeline(records)
    assert tl.pause_ms(G, "hv1", "hv2") is None
    # without the source's suspend its interval ends only at stopped, after the resume: an overlap
    assert tl.overlaps(G) == [(5.03, 5.04, ("hv1", "hv2"))]
    records = [r for r in migration("hv1", "hv2", 5.0, 5.03) if r.get("event") != "resumed"]
    assert Timeline(records).pause_ms(G, "hv1", "hv2") is None


def test_pause_of_the_migration_since_and_last_suspend():
    records = migration("hv1", "hv2", 5.0, 5.03)
    # back again later: the source is hv2 now
    records += [
        ev("hv1", 9.0, "started", "migrated"),
        ev("hv2", 10.0, "suspended", "migrated"),
        ev("hv1", 10.045, "resumed", "migrated"),
        ev("hv2", 10.05, "stopped", "migrated"),
    ]
    tl = Timeline(records)
    assert tl.pause_ms(G, "hv2", "hv1", since=8.0) == pytest.approx(45.0)
    assert tl.pause_ms(G, "hv1", "hv2", since=8.0) is None
    assert tl.running_intervals(G) == {"hv1": [(0, 5.0), (10.045, None)], "hv2": [(5.03, 10.0)]}
    # a paused source resumed and paused again: the pause counts from its last suspend
    tl = Timeline(
        [
            initial("hv1", 0, "running"),
            initial("hv2", 0, None),
            ev("hv1", 1.0, "suspended", "paused"),
            ev("hv1", 2.0, "resumed", "unpaused"),
            ev("hv1", 3.0, "suspended", "migrated"),
            ev("hv2", 3.2, "resumed", "migrated"),
        ]
    )
    assert tl.pause_ms(G, "hv1", "hv2") == pytest.approx(200.0)


def test_two_guests_of_one_name_overlap():
    tl = Timeline(
        [
            initial("hv1", 0, None),
            initial("hv2", 0, None),
            ev("hv1", 1.0, "started", "booted"),
            ev("hv2", 2.0, "started", "booted"),
            ev("hv1", 4.0, "stopped", "destroyed"),
        ]
    )
    assert tl.overlaps(G) == [(2.0, 4.0, ("hv1", "hv2"))]
    # another name is not this one
    assert tl.overlaps("other") == []


def test_initial_state_and_events_printed_around_it():
    # an event printed before the state read (its t earlier) is already in the state read; the observer
    # started while the guest ran on both: an overlap from the first reads on
    tl = Timeline(
        [
            ev("hv1", 0.5, "resumed", "unpaused"),
            initial("hv1", 1.0, "running"),
            initial("hv2", 1.1, "running"),
            ev("hv2", 1.05, "resumed", "unpaused"),  # redundant with the read after it
            ev("hv2", 3.0, "suspended", "paused"),
        ]
    )
    assert tl.running_intervals(G) == {"hv1": [(1.0, None)], "hv2": [(1.1, 3.0)]}
    assert tl.overlaps(G) == [(1.1, 3.0, ("hv1", "hv2"))]
    # a redundant event after the read changes nothing
    tl = Timeline([initial("hv1", 1.0, "running"), ev("hv1", 1.01, "resumed", "unpaused")])
    assert tl.running_intervals(G) == {"hv1": [(1.0, None)]}


def test_lost_connection_makes_overlap_possible_not_certain():
    records = [
        initial("hv1", 0, "running"),
        initial("hv2", 0, None),
        {"kind": "lost", "host": "hv1", "t": 4.0, "reason": 0},
        ev("hv2", 4.9, "started", "migrated"),
        ev("hv2", 5.0, "resumed", "migrated"),
        {"kind": "resync", "host": "hv1", "t": 6.0, "name": G, "state": "shutoff", "reason": "migrated"},
        {"kind": "reconnected", "host": "hv1", "t": 6.01},
    ]
    tl = Timeline(records)
    assert tl.running_intervals(G) == {"hv1": [(0, 4.0)], "hv2": [(5.0, None)]}
    assert tl.possible_intervals(G) == {"hv1": [(0, 6.0)], "hv2": [(5.0, None)]}
    assert tl.overlaps(G) == []
    assert tl.possible_overlaps(G) == [(5.0, 6.0, ("hv1", "hv2"))]
    assert tl.unobserved("hv1") == [(4.0, 6.01)]
    assert tl.unobserved("hv2") == []
    # still running after the reconnect: certain again from the read on, possible throughout
    records[5] = dict(records[5], state="running")
    tl = Timeline(records)
    assert tl.running_intervals(G)["hv1"] == [(0, 4.0), (6.0, None)]
    assert tl.possible_intervals(G)["hv1"] == [(0, None)]
    assert tl.overlaps(G) == [(6.0, None, ("hv1", "hv2"))]
    # an observer that never came back: possibly running from the loss on
    tl = Timeline(records[:5])
    assert tl.possible_intervals(G)["hv1"] == [(0, None)]
    assert tl.unobserved("hv1") == [(4.0, None)]


def test_lost_connection_while_not_running_on_either_side():
    records = [
        initial("hv1", 0, "running"),
        initial("hv2", 0, None),
        ev("hv1", 3.0, "suspended", "migrated"),
        ev("hv2", 3.02, "resumed", "migrated"),
        ev("hv1", 3.1, "stopped", "migrated"),
        {"kind": "lost", "host": "hv1", "t": 4.0, "reason": 0},
        {"kind": "resync", "host": "hv1", "t": 4.5, "name": G, "state": None, "reason": None},
        {"kind": "reconnected", "host": "hv1", "t": 4.51},
    ]
    tl = Timeline(records)
    assert tl.possible_intervals(G) == tl.running_intervals(G) == {"hv1": [(0, 3.0)], "hv2": [(3.02, None)]}
    assert tl.possible_overlaps(G) == []
    # not read again: from the loss on it may run
    assert Timeline(records[:6]).possible_intervals(G)["hv1"] == [(0, 3.0), (4.0, None)]


def test_events_in_a_lost_connection_are_not_used():
    tl = Timeline(
        [
            initial("hv1", 0, "running"),
            {"kind": "lost", "host": "hv1", "t": 1.0, "reason": 0},
            ev("hv1", 1.5, "resumed", "unpaused"),
        ]
    )
    assert tl.running_intervals(G)["hv1"] == [(0, 1.0)]


def test_overlaps_of_touching_and_three_hosts():
    assert overlaps_of({"a": [(0, 1)], "b": [(1, 2)]}) == []
    assert overlaps_of({"a": [(0, 3)], "b": [(1, 2)], "c": [(1.5, None)]}) == [
        (1, 1.5, ("a", "b")),
        (1.5, 2, ("a", "b", "c")),
        (2, 3, ("a", "c")),
    ]
    assert overlaps_of({"a": [(0, None)], "b": [(1, None)]}) == [(1, None, ("a", "b"))]
    assert overlaps_of({"a": [(1, 1)], "b": [(0, 2)]}) == []


def test_timeline_lines():
    tl = Timeline(migration("hv1", "hv2", 5.0, 5.032))
    lines = tl.timeline(G, origin=5.0)
    assert lines[0].split() == ["-5000.0", "ms", "hv1", "initial:", "running"]
    assert any(line.split() == ["+32.0", "ms", "hv2", "resumed/migrated"] for line in lines), lines
    assert tl.timeline("nothing") == []
