"""The checkpoint recorder and its clock."""

import re
import time

from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import CheckpointRecorder, utc_now


def test_utc_now_format():
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", utc_now())


def test_checkpoints_are_ordered_and_complete():
    ticks = iter(["2025-01-01T00:00:00.00{}Z".format(i) for i in range(5)])
    rec = CheckpointRecorder(host="hv1", clock=lambda: next(ticks))
    rec.record("created_paused")
    rec.record("resumed", resources=["/l/a"])
    rec.record("leases_verified", ok=False, detail="not held", host="hv2")
    items = rec.as_list()
    assert rec.names() == ["created_paused", "resumed", "leases_verified"]
    assert [c["at"] for c in items] == sorted(c["at"] for c in items)
    assert items[1] == {
        "name": "resumed",
        "host": "hv1",
        "at": "2025-01-01T00:00:00.001Z",
        "ok": True,
        "source": "api",
        "verified": False,
        "check": None,
        "resources": ["/l/a"],
        "detail": None,
    }
    assert items[2]["ok"] is False and items[2]["host"] == "hv2"
    assert rec.last()["name"] == "leases_verified" and len(rec) == 3
    items[1]["resources"].append("mutated")
    assert rec.as_list()[1]["resources"] == ["/l/a"]


def test_each_checkpoint_is_stamped_when_it_is_recorded():
    """Steps a few milliseconds apart get increasing times, each between the clock read before and after it."""
    rec = CheckpointRecorder()
    bounds = []
    for i in range(5):
        before = utc_now()
        rec.record("step{}".format(i))
        bounds.append((before, utc_now()))
        time.sleep(0.003)  # > 1 ms: the times of successive steps must differ
    ats = [c["at"] for c in rec]
    assert all(a < b for a, b in zip(ats, ats[1:])), ats
    assert all(lo <= at <= hi for at, (lo, hi) in zip(ats, bounds)), (ats, bounds)
    assert rec.host


def test_checkpoints_are_ordered_by_when_they_happened_not_when_recorded():
    """An event seen earlier and recorded later sorts first; its source and check are kept."""
    rec = CheckpointRecorder(host="hv1", clock=lambda: "2025-01-01T00:00:00.500Z")
    rec.record("finish/resumed", source="api")
    rec.record("perform/source_released", at="2025-01-01T00:00:00.100Z", source="event", check="lease probe from hv1")
    items = rec.as_list()
    assert [c["name"] for c in items] == ["perform/source_released", "finish/resumed"]
    assert items[0]["verified"] is True and items[0]["source"] == "event"
    assert items[1]["verified"] is False and items[1]["check"] is None
    assert rec.find("finish/resumed")["at"] == "2025-01-01T00:00:00.500Z"


def test_a_checkpoint_source_must_be_known():
    import pytest

    with pytest.raises(ValueError):
        CheckpointRecorder().record("x", source="guess")
