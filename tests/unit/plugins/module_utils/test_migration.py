"""Migration plan, flags and the checkpointed handoff against the fake hypervisors of tests/unit/fakes/migration.py
(which say what of libvirt's qemu and libxl drivers, and of virtlockd, they follow)."""

from datetime import datetime, timezone

import libvirt
import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import (
    CheckpointRecorder,
    PhaseRecorder,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import LeaseError, ValidationError, VirtError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import LockConfig
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.plan import (
    build_plan,
    checkpoint_order,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.profiles import LIBXL, QEMU
from ansible_collections.lockstep.virt.tests.unit.fakes.migration import (
    RESOURCES,
    SHARED,
    FakeDomain,
    FakeVirt,
    before,
    holders_at,
    make_world,
    manager,
    names_of,
    params,
)


# --------------------------------------------------------------------------- plan and flags
def test_default_plan_is_the_verified_paused_handoff():
    plan = build_plan(params(), QEMU)
    assert plan.flags == ["LIVE", "PEER2PEER", "PERSIST_DEST", "UNDEFINE_SOURCE", "PAUSED"]
    expected = 0
    for f in plan.flags:
        expected |= getattr(libvirt, "VIR_MIGRATE_" + f)
    assert plan.flags_value == expected
    assert plan.handoff == "verified" and plan.api == "migrateToURI3"


def test_every_option_becomes_its_flag_or_parameter():
    plan = build_plan(
        params(
            copy_storage="incremental",
            auto_converge=True,
            compressed=True,
            parallel_connections=4,
            unsafe=True,
            bandwidth=200,
            max_downtime=300,
            persistent=False,
            undefine_source=False,
            live=False,
        ),
        QEMU,
    )
    assert set(plan.flags) == {
        "PEER2PEER",
        "NON_SHARED_INC",
        "AUTO_CONVERGE",
        "COMPRESSED",
        "PARALLEL",
        "UNSAFE",
        "PAUSED",
    }
    assert plan.params == {"bandwidth": 200, "parallel.connections": 4}
    assert plan.max_downtime == 300


def test_modes():
    assert {"PEER2PEER", "TUNNELLED"} <= set(build_plan(params(mode="tunnelled"), QEMU).flags)
    direct = build_plan(params(mode="direct"), QEMU)
    assert "PEER2PEER" not in direct.flags and direct.api == "migrate3"


@pytest.mark.parametrize(
    "kw, text",
    [
        ({"mode": "direct", "extra_flags": ["TUNNELLED"]}, "tunnelled migration needs peer-to-peer"),
        ({"postcopy": 10, "live": False}, "postcopy needs a live migration"),
        ({"postcopy": 10, "lock": {"release": "before_send"}}, "postcopy cannot be combined"),
        ({"bandwidth": 0}, "bandwidth must be a positive number"),
        ({"lock": {"acquire_timeout": -1}}, "acquire_timeout"),
    ],
)
def test_contradictions_are_refused(kw, text):
    with pytest.raises(ValidationError, match=text):
        build_plan(params(**kw), QEMU)


def test_postcopy_hands_the_leases_to_libvirt():
    plan = build_plan(params(postcopy=5), QEMU)
    assert "POSTCOPY" in plan.flags and "PAUSED" not in plan.flags
    assert plan.handoff == "libvirt_postcopy"


def test_postcopy_bandwidth_is_libvirts_postcopy_parameter():
    plan = build_plan(params(postcopy=1, bandwidth=2, postcopy_bandwidth=1), QEMU)
    assert plan.params == {"bandwidth": 2, "bandwidth.postcopy": 1}
    assert "POSTCOPY" in plan.flags
    conv = build_plan(params(postcopy_bandwidth=5, convergence={"timeout_action": "postcopy"}), QEMU)
    assert conv.params["bandwidth.postcopy"] == 5 and "POSTCOPY" in conv.flags


@pytest.mark.parametrize(
    "kw, text",
    [
        ({}, "postcopy_bandwidth limits the post-copy phase, which this migration does not have"),
        ({"convergence": {"timeout_action": "abort"}}, "set postcopy \\(or convergence.timeout_action: postcopy\\)"),
        ({"postcopy": 1, "postcopy_bandwidth": 0}, "postcopy_bandwidth must be a positive number, not 0"),
        ({"postcopy": 1, "postcopy_bandwidth": -3}, "postcopy_bandwidth must be a positive number"),
    ],
)
def test_postcopy_bandwidth_without_a_post_copy_phase_is_refused(kw, text):
    kw.setdefault("postcopy_bandwidth", 10)
    with pytest.raises(ValidationError, match=text):
        build_plan(params(**kw), QEMU)


def test_postcopy_bandwidth_is_refused_by_a_driver_without_post_copy():
    with pytest.raises(ValidationError, match="not supported by the libxl driver"):
        build_plan(params(postcopy=1, postcopy_bandwidth=1), LIBXL)


def test_libxl_profile_allows_only_its_subset():
    plan = build_plan(params(), LIBXL)
    assert plan.flags == ["LIVE", "PEER2PEER", "PERSIST_DEST", "UNDEFINE_SOURCE", "PAUSED"]
    for kw in ({"unsafe": True}, {"compressed": True}, {"copy_storage": "all"}, {"auto_converge": True}):
        with pytest.raises(ValidationError, match="not supported by the libxl driver"):
            build_plan(params(**kw), LIBXL)
    with pytest.raises(ValidationError, match="bandwidth not supported by the libxl driver"):
        build_plan(params(bandwidth=10), LIBXL)


def test_phase_recorder_renames_and_drops():
    rec = CheckpointRecorder(host="h")
    pr = PhaseRecorder(rec, "finish", {"acquire_failed": "acquire_busy", "running": None})
    pr.record("acquire_failed", ok=False)
    pr.record("running")
    pr.record("resumed")
    assert rec.names() == ["finish/acquire_busy", "finish/resumed"]


def test_qemu_handoff_resumes_the_destination_as_soon_as_it_arrived_and_the_source_released():
    w, hv1, hv2 = make_world("qemu")
    result = manager(w).run()
    assert result["changed"] is True and result["state"] == "running"
    names = names_of(result)
    assert names == checkpoint_order(driver="qemu")
    assert all(c["ok"] for c in result["lock_checkpoints"])
    at = holders_at(result)
    assert at["begin/inquire"] == ["source"]
    assert at["perform/source_released"] == []  # qemu: nobody holds them in the gap
    assert at["finish/dest_acquired"] == ["other"]
    # released at the source's vCPU stop, resumed before libvirt confirmed the source
    assert w.log.index("release@hv1") < w.log.index("resume@hv2") < w.log.index("confirm")
    assert "g1" not in hv1.domains and hv2.domains["g1"]._state == "running"
    assert w.locks == {r: "hv2" for r in RESOURCES}
    assert result["job"]["elapsed_ms"] == 700
    assert result["timing_source"] == "events" and result["downtime_ms"] is not None
    assert result["lease_gap_ms"] == result["downtime_ms"]
    by_name = dict((c["name"], c) for c in result["lock_checkpoints"])
    assert by_name["perform/source_released"]["source"] == "event"
    assert by_name["perform/source_released"]["verified"] is True
    assert by_name["finish/resumed"]["source"] == "event"
    assert by_name["finish/dest_acquired"]["source"] == "probe"
    assert "not by hv1's virtlockd" in by_name["finish/dest_acquired"]["detail"]
    assert [c["at"] for c in result["lock_checkpoints"]] == sorted(c["at"] for c in result["lock_checkpoints"])
    assert hv2.domains["g1"].metadata_xml is None  # the handoff marker is gone once it is complete


def test_the_destination_never_resumes_before_the_probe_shows_the_source_released():
    w, hv1, hv2 = make_world("qemu")
    w.release_at_confirm = True  # a source that keeps its leases past the destination's arrival
    result = manager(w).run()
    assert w.log.index("release@hv1") < w.log.index("resume@hv2")
    assert w.log.index("confirm") < w.log.index("resume@hv2")  # no early resume then
    names = names_of(result)
    assert before(names, "perform/source_released", "finish/resumed")
    assert hv2.domains["g1"]._state == "running"


def test_without_events_the_destination_resumes_after_the_call():
    w, hv1, hv2 = make_world("qemu")
    result = manager(w, events=False).run()
    assert w.log.index("confirm") < w.log.index("resume@hv2")
    assert result["downtime_ms"] is None and result["lease_gap_ms"] is None and result["timing_source"] is None
    assert set(names_of(result)) == set(checkpoint_order(driver="qemu"))
    assert hv2.domains["g1"]._state == "running"


def test_libxl_order_source_releases_only_after_the_send_and_dest_acquires_in_finish():
    w, _hv1, hv2 = make_world("libxl")
    result = manager(w).run()
    assert w.log == ["begin", "prepare", "release@hv1", "perform", "acquire@hv2", "finish", "confirm", "resume@hv2"]
    at = holders_at(result)
    assert at["perform/source_released"] == ["other"]  # the destination already took them in Finish
    assert hv2.domains["g1"]._state == "running"


@pytest.mark.parametrize("driver,when", [("libxl", "before_stop"), ("qemu", "before_stop")])
def test_failed_send_needs_no_reacquire(driver, when):
    w, hv1, hv2 = make_world(driver)
    w.fail_send = when
    with pytest.raises(VirtError) as info:
        manager(w).run()
    err = info.value
    assert err.msg.startswith("perform: sending g1 from hv1 to hv2 failed")
    assert "keeps running on hv1 holding its leases (verified)" in err.msg
    names = names_of(err.result)
    assert names == ["begin/inquire", "prepare/register", "perform/send", "finish/dest_clean", "confirm/source_kept"]
    assert err.result["changed"] is False
    assert w.locks == {r: "hv1" for r in RESOURCES}
    assert not any(e.startswith(("release", "acquire")) for e in w.log)
    assert hv1.domains["g1"]._state == "running" and "g1" not in hv2.domains
    assert hv1.domains["g1"].metadata_xml is None


def test_send_cancelled_after_the_vcpus_stopped_takes_the_leases_back():
    w, hv1, hv2 = make_world("qemu")
    w.fail_send = "after_stop"
    with pytest.raises(VirtError) as info:
        manager(w).run()
    names = names_of(info.value.result)
    assert "confirm/source_resumed_unleased" in names and "confirm/source_reacquired" in names
    assert w.locks == {r: "hv1" for r in RESOURCES}
    assert hv1.domains["g1"]._state == "running" and "g1" not in hv2.domains


def test_busy_destination_is_retried_then_succeeds():
    w, _hv1, hv2 = make_world("qemu")
    w.stale_attempts = 2
    result = manager(w).run()
    names = [c["name"] for c in result["lock_checkpoints"]]
    assert names.count("finish/acquire_busy") == 2
    assert [n for n in names if n != "finish/acquire_busy"] == checkpoint_order()
    assert hv2.domains["g1"]._state == "running"


def test_busy_destination_past_the_timeout_is_left_paused_running_nowhere():
    w, hv1, hv2 = make_world("qemu")
    w.stale_attempts = 10**6
    with pytest.raises(LeaseError) as info:
        manager(w, lock={"acquire_timeout": 0}).run()
    assert info.value.msg.startswith("finish: hv2 could not take the leases of g1")
    assert "runs nowhere" in info.value.msg
    names = names_of(info.value.result)
    assert {"finish/acquire_busy", "finish/dest_acquired", "confirm/source_stopped"} <= set(names)
    assert info.value.result["changed"] is True and info.value.result["state"] == "paused"
    assert hv2.domains["g1"]._state == "paused" and "g1" not in hv1.domains


def test_before_send_failed_send_must_reacquire_and_can_fail():
    w, hv1, hv2 = make_world("qemu")
    w.fail_send = "before_stop"
    real = FakeDomain.migrateToURI3

    def send_while_dest_holds(self, uri, p, flags):
        w.locks[RESOURCES[1]] = "hv2"  # the half-received guest's lease, not cleaned up yet
        return real(self, uri, p, flags)

    hv1.domains["g1"].migrateToURI3 = send_while_dest_holds.__get__(hv1.domains["g1"])
    with pytest.raises(LeaseError) as info:
        manager(w, lock={"release": "before_send", "acquire_timeout": 0}).run()
    assert "could not take its leases back" in info.value.msg
    names = [c["name"] for c in info.value.result["lock_checkpoints"]]
    assert names[:5] == [
        "begin/inquire",
        "perform/source_paused",
        "perform/source_released",
        "prepare/register",
        "perform/send",
    ]
    assert "confirm/source_reacquire_busy" in names
    assert hv1.domains["g1"]._state == "paused"
    assert any("before_send" in x for x in info.value.result["warnings"])


def test_already_on_destination_is_unchanged():
    w, _hv1, _hv2 = make_world("qemu", where="hv2")
    result = manager(w).run()
    assert result["changed"] is False and result["state"] == "running"
    assert [c["name"] for c in result["lock_checkpoints"]] == ["begin/inquire"]


def test_same_host_is_refused():
    w, _hv1, _hv2 = make_world("qemu", same_uuid=True)
    with pytest.raises(ValidationError, match="same host UUID uuid-1"):
        manager(w).run()


def test_guest_not_found():
    w, hv1, _hv2 = make_world("qemu")
    del hv1.domains["g1"]
    with pytest.raises(ValidationError, match="guest g1 not found on hv1"):
        manager(w).run()


def test_check_mode_plans_and_touches_nothing():
    w, hv1, _hv2 = make_world("qemu")
    result = manager(w, check_mode=True).run()
    assert result["changed"] is True and result["lock_checkpoints"] == []
    assert "PAUSED" in result["plan"]["flags"] and "finish/dest_acquired" in result["would"]
    assert w.log == [] and hv1.domains["g1"]._state == "running"


def test_check_mode_fails_when_the_source_does_not_hold_its_leases():
    w, _hv1, _hv2 = make_world("qemu")
    w.locks[RESOURCES[1]] = None
    with pytest.raises(VirtError, match="source_holds_leases"):
        manager(w, check_mode=True).run()
    assert w.log == []


# --------------------------------------------------------------------------- reconcile
STARTED = "2026-01-01T10:00:00.000Z"
MIGRATED_LOG = ("stopped", "migrated", datetime(2026, 1, 1, 10, 0, 5, tzinfo=timezone.utc))


def handoff_tag(was="running", persist="1"):
    return (
        '<handoff source="hv1" dest="hv2" was="{}" host="elsewhere" boot="x" pid="1" started="{}" '
        'persist="{}"/>'.format(was, STARTED, persist)
    )


def interrupted_world(src_state=None, dest_state="paused", marker=True, was="running", locks=None, src_reason=None):
    """What a killed run leaves: the guest where libvirt left it, with (or without) the handoff marker.

    ``src_state`` None: the source's definition is gone (UNDEFINE_SOURCE at libvirt's confirm).
    """
    w, hv1, hv2 = make_world("qemu")
    src = hv1.domains["g1"]
    if src_state is None:
        del hv1.domains["g1"]
    else:
        src.set(src_state, src_reason if src_reason is not None else {"paused": 2, "shutoff": 4}.get(src_state, 1))
    dest = FakeDomain(w, "hv2", state=dest_state)
    hv2.domains["g1"] = dest
    for dom in (dest, src if src_state else None):
        if dom is not None and marker:
            dom.metadata_xml = handoff_tag(was)
    w.locks = dict(locks or {r: None for r in RESOURCES})
    return w, hv1, hv2


def test_rerun_resumes_the_destination_when_the_source_log_says_migrated():
    w, hv1, hv2 = interrupted_world()
    seen = []
    result = manager(w, source_log=lambda name, since: seen.append((name, since)) or MIGRATED_LOG).run()
    assert seen == [("g1", STARTED)]
    assert result["changed"] is True and result["state"] == "running"
    names = names_of(result)
    assert names[0] == "reconcile/found" and "reconcile/dest_resumed" in names
    assert "reconcile/dest_acquired" in names and names[-1] == "reconcile/marker_cleared"
    finished = [c for c in result["lock_checkpoints"] if c["name"] == "reconcile/source_finished"][0]
    assert "reason=migrated" in finished["check"]
    assert hv2.domains["g1"]._state == "running" and w.locks == {r: "hv2" for r in RESOURCES}
    assert hv2.domains["g1"].metadata_xml is None


def test_rerun_resumes_the_destination_when_the_source_is_shut_off_migrated():
    w, hv1, hv2 = interrupted_world(src_state="shutoff", src_reason=4)
    result = manager(w, undefine_source=False).run()
    assert result["changed"] is True and hv2.domains["g1"]._state == "running"
    finished = [c for c in result["lock_checkpoints"] if c["name"] == "reconcile/source_finished"][0]
    assert "reason migrated" in finished["check"]


@pytest.mark.parametrize(
    "src_state,src_reason,log,word",
    [
        ("shutoff", 1, None, "reason shutdown"),  # a lost Finish reply, then the guest shut down on the source
        ("shutoff", 3, None, "reason crashed"),
        (None, None, ("stopped", "destroyed", datetime(2026, 1, 1, 11, tzinfo=timezone.utc)), "reason=destroyed"),
        (None, None, ("started", None, datetime(2026, 1, 1, 11, tzinfo=timezone.utc)), "started again"),
        (None, None, None, "says nothing"),  # no log to read: no evidence
    ],
)
def test_rerun_never_resumes_a_destination_copy_nothing_proves_current(src_state, src_reason, log, word):
    w, hv1, hv2 = interrupted_world(src_state=src_state, src_reason=src_reason)
    with pytest.raises(VirtError) as info:
        manager(w, source_log=lambda name, since: log).run()
    err = info.value
    assert err.msg.startswith("reconcile: g1 is") and word in err.msg and "runs nowhere" in err.msg
    assert "Nothing was changed" in err.msg and err.result["changed"] is False
    assert hv2.domains["g1"]._state == "paused" and hv2.domains["g1"].metadata_xml is not None
    assert w.locks == {r: None for r in RESOURCES} and w.log == []
    found = [c for c in err.result["lock_checkpoints"] if c["name"] == "reconcile/found"][0]
    assert found["ok"] is False


def test_a_guest_paused_by_someone_on_the_destination_is_left_alone():
    w, hv1, hv2 = interrupted_world(marker=False)
    result = manager(w).run()
    assert result["changed"] is False and result["state"] == "paused"
    assert any("no handoff marker" in x for x in result["warnings"])
    assert hv2.domains["g1"]._state == "paused"


def test_rerun_while_the_source_still_holds_a_lease_changes_nothing():
    w, hv1, hv2 = interrupted_world(locks={RESOURCES[0]: "hv1", RESOURCES[1]: None})
    with pytest.raises(LeaseError, match="reconcile: g1 is paused on hv2 and runs nowhere"):
        manager(w, source_log=lambda name, since: MIGRATED_LOG).run()
    assert hv2.domains["g1"]._state == "paused"


def test_rerun_stops_the_unconfirmed_source_copy_once_the_destination_runs_leased():
    w, hv1, hv2 = interrupted_world(src_state="paused", dest_state="running", locks={r: "hv2" for r in RESOURCES})
    result = manager(w).run()
    assert result["changed"] is True
    assert "reconcile/source_stopped" in names_of(result)
    assert "g1" not in hv1.domains and hv2.domains["g1"]._state == "running"


def test_rerun_resumes_a_source_left_paused_and_migrates():
    w, hv1, hv2 = make_world("qemu")
    src = hv1.domains["g1"]
    src.set("paused", 2)
    src.metadata_xml = handoff_tag()
    w.locks = {r: None for r in RESOURCES}
    result = manager(w).run()
    names = names_of(result)
    assert names[:2] == ["reconcile/found", "reconcile/source_resumed"]
    assert "PERSIST_DEST" in result["lock_checkpoints"][0]["check"]
    assert result["changed"] is True and hv2.domains["g1"]._state == "running" and "g1" not in hv1.domains


@pytest.mark.parametrize("dest_state,persist", [("shutoff", "1"), (None, "0")])
def test_rerun_never_resumes_a_source_paused_after_the_send_when_the_destination_may_have_run(dest_state, persist):
    # the source libvirtd died between Finish and Confirm: the destination ran (it keeps the definition
    # PERSIST_DEST gave it) and stopped there; or it was not made persistent and may have run and gone
    w, hv1, hv2 = make_world("qemu")
    src = hv1.domains["g1"]
    src.set("paused", 2)
    src.metadata_xml = handoff_tag(persist=persist)
    if dest_state:
        hv2.domains["g1"] = FakeDomain(w, "hv2", state=dest_state, reason=2)
    w.locks = {r: None for r in RESOURCES}
    with pytest.raises(VirtError) as info:
        manager(w).run()
    assert "may have run the guest after the send" in info.value.msg and "runs nowhere" in info.value.msg
    assert src._state == "paused" and w.log == [] and info.value.result["changed"] is False


def test_a_failed_post_copy_is_its_own_outcome_never_ok():
    w, hv1, hv2 = interrupted_world(src_state="paused", src_reason=13, dest_state="running")
    hv2.domains["g1"].reason = 11  # VIR_DOMAIN_RUNNING_POSTCOPY_FAILED
    with pytest.raises(VirtError) as info:
        manager(w).run()
    assert "post-copy migration did not finish" in info.value.msg and "postcopy-resume" in info.value.msg
    assert info.value.result["outcome"] == "postcopy_failed" and info.value.result["changed"] is False
    assert hv2.domains["g1"].metadata_xml is not None and hv1.domains["g1"]._state == "paused"


def test_a_failed_post_copy_whose_source_died_is_reported_as_such_despite_libvirts_kept_job():
    # libvirt 9.0 + QEMU 7.2, the source's QEMU killed after the switch: the source is shut off (crashed), the
    # destination runs with reason post-copy failed and keeps its incoming job for a recovery
    w, hv1, hv2 = interrupted_world(src_state="shutoff", src_reason=3, dest_state="running")
    hv2.domains["g1"].reason = 11  # VIR_DOMAIN_RUNNING_POSTCOPY_FAILED
    err = libvirt.libvirtError("Operation not supported: migration statistics are available only on the source host")
    err.err = (libvirt.VIR_ERR_OPERATION_UNSUPPORTED, libvirt.VIR_FROM_QEMU, err.args[0], 2, None, None, None, 0, 0)
    hv2.domains["g1"].job_error = err
    with pytest.raises(VirtError) as info:
        manager(w).run()
    assert info.value.result["outcome"] == "postcopy_failed" and info.value.result["changed"] is False
    assert "post-copy migration did not finish" in info.value.msg and "recovery cannot help" in info.value.msg
    assert w.log == [] and hv2.domains["g1"]._state == "running" and hv1.domains["g1"]._state == "shutoff"


def test_an_incoming_job_on_the_destination_blocks_the_rerun():
    w, hv1, hv2 = interrupted_world(src_state="paused")
    err = libvirt.libvirtError("Operation not supported: migration statistics are available only on the source host")
    err.err = (libvirt.VIR_ERR_OPERATION_UNSUPPORTED, libvirt.VIR_FROM_QEMU, err.args[0], 2, None, None, None, 0, 0)
    hv2.domains["g1"].job_error = err
    with pytest.raises(VirtError, match="a migration job of g1 is active on hv2"):
        manager(w).run()
    assert w.log == [] and hv2.domains["g1"]._state == "paused"


def test_the_resume_retries_stop_once_the_source_runs_the_guest_again():
    # a lost Finish reply: libvirt's confirm ran cancelled and resumed the source while the destination's
    # resume was refused; retrying until the lease is free would resume the older copy
    w, hv1, hv2 = interrupted_world(src_state=None)
    w.stale_attempts = 1000
    real_resume = FakeDomain.resume
    calls = []

    def refused_then_source_back(self):
        calls.append(self.host)
        if len(calls) == 2:
            back = FakeDomain(w, "hv1", state="running")
            hv1.domains["g1"] = back
        return real_resume(self)

    FakeDomain.resume = refused_then_source_back
    try:
        with pytest.raises(VirtError) as info:
            manager(w, lock={"acquire_timeout": 30}, source_log=lambda name, since: MIGRATED_LOG).run()
    finally:
        FakeDomain.resume = real_resume
    assert "hv1 runs g1 again" in info.value.msg
    assert calls == ["hv2", "hv2"] and hv2.domains["g1"]._state == "paused"


def test_a_run_still_at_work_is_left_alone(monkeypatch):
    from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration import reconcile

    w, hv1, hv2 = make_world("qemu")
    hv1.domains["g1"].metadata_xml = '<handoff source="hv1" dest="hv2" was="running" host="hv1" pid="7"/>'
    monkeypatch.setattr(reconcile, "owner_alive", lambda marker, host: marker.get("pid") == "7")
    with pytest.raises(VirtError, match="another run \\(pid 7\\) is migrating g1"):
        manager(w).run()
    assert w.log == [] and hv1.domains["g1"]._state == "running"


# --------------------------------------------------------------------------- failures after the send
def test_a_libvirt_error_after_the_send_returns_the_whole_result(monkeypatch):
    from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration import run as migration_run

    monkeypatch.setattr(migration_run, "RECONNECT_WAIT", 0.2)
    w, hv1, hv2 = make_world("qemu")
    real = FakeVirt.lookupByName
    sent = {}

    def lookup_breaks_once_sent(self, name):
        if self.host.hostname == "hv2" and "g1" in hv2.domains and w.log[-1:] == ["confirm"]:
            sent["broken"] = True
            raise libvirt.libvirtError("internal error: client socket is closed")
        return real(self, name)

    monkeypatch.setattr(FakeVirt, "lookupByName", lookup_breaks_once_sent)
    with pytest.raises(VirtError) as info:
        manager(w, events=False).run()
    err = info.value
    assert sent and err.msg.startswith("finish: ") and "client socket is closed" in err.msg
    assert "unknown on hv2" in err.msg and "absent on hv1" in err.msg
    assert err.result["changed"] is True and err.result["state"] == "unknown"
    assert "perform/send" in names_of(err.result) or "prepare/register" in names_of(err.result)


def test_a_guest_killed_on_the_destination_after_it_resumed_is_reported_there():
    w, hv1, hv2 = make_world("qemu")
    real_resume = FakeDomain.resume

    def resume_then_crash(self):
        real_resume(self)
        if self.host == "hv2":
            self.destroy()  # QEMU killed: virtlockd drops its locks with the process

    FakeDomain.resume = resume_then_crash
    try:
        with pytest.raises(VirtError) as info:
            manager(w).run()
    finally:
        FakeDomain.resume = real_resume
    assert "stopped on hv2 right after it resumed there" in info.value.msg and "runs nowhere" in info.value.msg
    assert info.value.result["changed"] is True


def test_a_source_libvirt_left_paused_after_a_failed_send_is_resumed_with_its_leases():
    w, hv1, hv2 = make_world("qemu")
    w.fail_send = "after_stop_left_paused"
    with pytest.raises(VirtError) as info:
        manager(w).run()
    names = names_of(info.value.result)
    assert "confirm/source_left_paused" in names and "confirm/source_reacquired" in names
    assert "resumed after libvirt left it paused" in info.value.msg
    assert w.locks == {r: "hv1" for r in RESOURCES} and hv1.domains["g1"]._state == "running"


# --------------------------------------------------------------------------- shareable disks
def shared_world(others=("g2",), shared_only=False, getlk_first="hv1"):
    """g1 on hv1 with a shareable disk that ``others`` (running guests on hv1) share: hv1's virtlockd holds one
    shared lock for all of them."""
    w, hv1, hv2 = make_world("qemu")
    w.shares = {"hv1": set(("g1",) + tuple(others))}
    w.shared_only = shared_only
    w.getlk_first = getlk_first
    if shared_only:
        w.locks = {}
    return w, hv1, hv2


def leases_at(result, name, resource=SHARED):
    cp = dict((c["name"], c) for c in result["lock_checkpoints"])[name]
    return [x for x in cp["leases"] if x["resource"] == resource]


@pytest.mark.parametrize("getlk_first", ["hv1", "hv2"])
@pytest.mark.parametrize("shared_only", [False, True])
def test_a_disk_shared_with_a_guest_left_on_the_source_is_handed_off(shared_only, getlk_first):
    w, hv1, hv2 = shared_world(shared_only=shared_only, getlk_first=getlk_first)
    result = manager(w).run()
    assert result["changed"] is True and result["state"] == "running"
    assert names_of(result) == checkpoint_order(driver="qemu")
    assert all(c["ok"] for c in result["lock_checkpoints"]), result["lock_checkpoints"]
    (begin,) = leases_at(result, "begin/inquire")
    assert begin["holder"] == "source_shared" and begin["lock"] == "shared" and begin["sharers"] == ["g2"]
    by_name = dict((c["name"], c) for c in result["lock_checkpoints"])
    released = by_name["perform/source_released"]
    assert "shareable disk vdb" in released["check"] and "hv1's SUSPENDED event" in released["check"]
    assert leases_at(result, "perform/source_released")[0]["holder"] == "source_shared"
    (acquired,) = leases_at(result, "finish/dest_acquired")
    assert acquired["holder"] in ("source_shared", "other") and acquired["lock"] == "shared"
    assert "the resume succeeding is the evidence" in by_name["finish/dest_acquired"]["check"]
    # released at the vCPU stop, resumed before libvirt confirmed the source; g2 keeps hv1's shared lock
    assert w.log.index("release@hv1") < w.log.index("resume@hv2") < w.log.index("confirm")
    assert w.shares == {"hv1": {"g2"}, "hv2": {"g1"}}
    assert hv2.domains["g1"]._state == "running" and "g1" not in hv1.domains


def test_a_shareable_disk_nobody_else_shares_is_the_guests_own_until_it_stops():
    w, hv1, hv2 = shared_world(others=())
    result = manager(w).run()
    assert all(c["ok"] for c in result["lock_checkpoints"])
    assert leases_at(result, "begin/inquire")[0]["holder"] == "source"  # nobody else shares it: its own share
    assert leases_at(result, "perform/source_released")[0]["held"] is False
    assert w.shares == {"hv1": set(), "hv2": {"g1"}}


def test_a_shared_lock_kept_for_another_guest_is_no_evidence_that_the_source_let_go():
    """The destination reports its arrival while the source still runs: the lock cannot show whether g1's own
    share is still held (hv1 keeps it for g2), so only the source's vCPU stop lets the destination resume."""
    w, hv1, hv2 = shared_world(shared_only=True)
    w.arrive_before_stop = True
    result = manager(w).run()
    assert w.log.index("release@hv1") < w.log.index("resume@hv2")
    assert hv2.domains["g1"]._state == "running"
    by_name = dict((c["name"], c) for c in result["lock_checkpoints"])
    assert by_name["perform/source_released"]["ok"] is True


def test_a_failed_send_keeps_the_guest_on_the_source_with_its_share():
    w, hv1, hv2 = shared_world()
    w.fail_send = "before_stop"
    with pytest.raises(VirtError) as info:
        manager(w).run()
    assert "keeps running on hv1 holding its leases (verified)" in info.value.msg
    assert w.shares == {"hv1": {"g1", "g2"}}


# --------------------------------------------------------------------------- the destination's lock configuration
@pytest.mark.parametrize("check_mode", [False, True])
@pytest.mark.parametrize(
    "dest, check, text",
    [
        (LockConfig(manager=None, lock_conf="/etc/libvirt/qemu.conf"), "dest_lock_manager", "hv2 has no lock manager"),
        (LockConfig(manager="sanlock", disk_lease_dir="/ls"), "dest_lock_manager", "hv2 uses lock manager sanlock"),
        (LockConfig(manager="lockd", file_lockspace_dir="/other"), "dest_lockspace", "another lockspace than hv1"),
        (LockConfig(manager="lockd", file_lockspace_dir="/ls", auto_disk_leases=0), "dest_lockspace", "not leased"),
        (
            LockConfig(manager=None, errors=["cannot read /etc/libvirt/qemu.conf: over ssh to hv2: denied"]),
            "dest_lock_manager",
            "cannot read the lock configuration of hv2",
        ),
    ],
    ids=["no-lock-manager", "other-manager", "other-lockspace", "no-disk-leases", "unreadable"],
)
def test_a_destination_that_would_lease_the_guest_otherwise_is_refused_before_anything_moves(
    dest, check, text, check_mode
):
    w, hv1, hv2 = make_world("qemu")
    with pytest.raises(VirtError) as info:
        manager(w, check_mode=check_mode, dest_config=dest).run()
    err = info.value
    assert err.msg.startswith(
        ("check mode: " if check_mode else "") + "begin: migration of g1 from hv1 to hv2 would fail"
    )
    assert text in err.msg
    assert [c["name"] for c in err.result["checks"] if not c["ok"]] == [check]
    assert err.result["changed"] is False and err.result["lock_checkpoints"] == []
    assert w.log == [] and hv1.domains["g1"]._state == "running" and "g1" not in hv2.domains
    assert w.locks == {r: "hv1" for r in RESOURCES} and hv1.domains["g1"].metadata_xml is None


def test_a_destination_with_the_same_lockspace_passes_and_says_so():
    w, hv1, hv2 = make_world("qemu")
    result = manager(w, check_mode=True).run()
    (ok,) = [c for c in result["checks"] if c["name"] == "dest_lock_manager"]
    assert ok["ok"] is True and "same lockspace as hv1 (/ls" in ok["detail"]


def test_without_verification_the_destination_is_not_read():
    w, hv1, hv2 = make_world("qemu")
    result = manager(w, dest_config=LockConfig(manager=None), lock={"verify": False}).run()
    assert result["state"] == "running" and not [c for c in result["checks"] if c["name"].startswith("dest_lock")]


# --------------------------------------------------------------------------- no probe in libvirt's event thread
def test_no_lease_probe_runs_in_the_event_thread_and_checkpoints_keep_both_times():
    w, hv1, hv2 = make_world("qemu")
    w.probe_delay = 0.05  # a slow shared filesystem: the callback must not wait for it
    result = manager(w).run()
    assert w.probes_in_callback == 0
    assert "lease-probe" in w.probe_threads  # the event's probe ran in the prober thread
    assert max(w.callback_seconds) < w.probe_delay, w.callback_seconds
    by_name = dict((c["name"], c) for c in result["lock_checkpoints"])
    prepare = by_name["prepare/register"]
    assert prepare["source"] == "event" and prepare["ok"]
    events = [e for e in result["events"] if e["role"] == "dest" and e["event"] == "started"]
    assert prepare["at"] == events[0]["at"]  # the event's time for the event
    assert prepare["probed_at"] >= prepare["at"]  # the probe's own time for the probe, never before it
    assert [c["at"] for c in result["lock_checkpoints"]] == sorted(c["at"] for c in result["lock_checkpoints"])
    # the early-resume rule: resumed only after the probe showed the source released
    assert w.log.index("release@hv1") < w.log.index("resume@hv2")
    assert by_name["perform/source_released"]["probed_at"] <= by_name["finish/resumed"]["at"]


def test_a_source_that_goes_away_while_it_is_read_is_read_again_as_absent():
    # another run's confirm undefined the source between this run's lookup and its state read
    w, hv1, hv2 = interrupted_world(src_state="paused", src_reason=2)
    src = hv1.domains["g1"]

    def gone():
        hv1.domains.pop("g1", None)
        err = libvirt.libvirtError("Domain not found: no domain with matching uuid")
        err.err = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU, err.args[0], 2, None, None, None, 0, 0)
        raise err

    src.state = gone
    result = manager(w, source_log=lambda name, since: MIGRATED_LOG).run()
    assert result["changed"] is True and hv2.domains["g1"]._state == "running"
    assert "reconcile/dest_resumed" in names_of(result)
