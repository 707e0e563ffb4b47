"""Convergence control: the plan (Nova's ramp, per-GiB timings), the monitor's decisions on synthetic job
statistics, bad input, and the manager carrying the decisions out on a fake hypervisor (a job that takes the
fake clock's time, aborted, switched to post-copy, paused, failed after the switch)."""

import threading

import libvirt
import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError, VirtError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.convergence import (
    GIB,
    MIB,
    ConvergenceMonitor,
    convergence_ramp,
    data_gib,
    describe_ramp,
    downtime_ramp,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.plan import build_plan
from ansible_collections.lockstep.virt.plugins.module_utils._virt.profiles import LIBXL, QEMU
from ansible_collections.lockstep.virt.tests.unit.fakes.migration import (
    RESOURCES,
    FakeDomain,
    make_world,
    manager,
    params,
)


def conv(**kw):
    out = {
        "max_downtime": 500,
        "downtime_steps": 10,
        "downtime_delay": 75.0,
        "completion_timeout": 800.0,
        "timeout_action": "abort",
        "progress_timeout": 0.0,
        "auto_converge": False,
        "auto_converge_initial": None,
        "auto_converge_increment": None,
    }
    out.update(kw)
    return out


def nova_downtime_steps(data_gb, downtime=500, steps=10, delay=75):
    """nova/virt/libvirt/migration.py downtime_steps(), as Nova has it."""
    delay = int(delay * data_gb)
    base = downtime / steps
    offset = (downtime - base) / steps
    for i in range(steps + 1):
        yield (int(delay * i), int(base + offset * i))


# --------------------------------------------------------------------------- plan
def test_ramp_is_novas_for_novas_sizes():
    # Nova counts memory as at least 2 GiB: floor_gib=2 gives its figures exactly
    for memory_gib, floor in ((1, 2), (2, 2), (4, 0), (8, 0)):
        plan = convergence_ramp(conv(), memory_gib * GIB, floor_gib=floor)
        ours = [(s["after_s"], s["downtime_ms"]) for s in plan["downtime_steps"]]
        assert ours == list(nova_downtime_steps(max(memory_gib, floor))), memory_gib


def test_ramp_goes_from_max_over_steps_up_to_max():
    assert downtime_ramp(500, 10, 1.0)[0] == (0.0, 50) and downtime_ramp(500, 10, 1.0)[-1] == (10.0, 500)
    assert [ms for _t, ms in downtime_ramp(100, 3, 2.0)] == [33, 55, 77, 100]
    assert [t for t, _ms in downtime_ramp(300, 3, 2.5)] == [0.0, 2.5, 5.0, 7.5]
    ramp = [ms for _t, ms in downtime_ramp(1000, 7, 1)]
    assert ramp == sorted(ramp) and len(ramp) == 8 and ramp[-1] == 1000


def test_delay_and_completion_timeout_scale_with_the_data_to_move():
    small = convergence_ramp(conv(), 128 * MIB)  # the lab guest
    assert small["data_gib"] == 0.125
    assert small["step_delay_s"] == 9.375 and small["completion_timeout_s"] == 100.0
    assert small["downtime_steps"][3]["after_s"] == 28.125
    big = convergence_ramp(conv(), 4 * GIB, disk_bytes=12 * GIB)
    assert big["data_gib"] == 16 and big["step_delay_s"] == 1200 and big["completion_timeout_s"] == 12800
    assert data_gib(GIB // 2, GIB // 4, floor_gib=2) == 4  # Nova: 2 GiB at least each
    assert convergence_ramp(conv(completion_timeout=0), GIB)["completion_timeout_s"] is None


def test_plan_warns_when_the_timeouts_cut_the_ramp_short():
    plan = convergence_ramp(conv(progress_timeout=5, downtime_delay=80), GIB)
    assert any("shorter than one downtime step" in w for w in plan["warnings"])
    plan = convergence_ramp(conv(completion_timeout=100), GIB)  # ramp ends at 750 s
    assert any("before the last downtime step" in w for w in plan["warnings"])
    assert convergence_ramp(conv(), GIB)["warnings"] == []


def test_describe_plan():
    text = describe_ramp(convergence_ramp(conv(timeout_action="postcopy", progress_timeout=30), 128 * MIB))
    assert text == (
        "downtime 50->500 ms in 10 raises every 9.375s (0.125 GiB to move); after 100.0s: postcopy; "
        "abort after 30.0s without progress"
    )


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kw, text",
    [
        ({"convergence": conv(downtime_steps=2)}, "downtime_steps must be at least 3"),
        ({"convergence": conv(max_downtime=99)}, "max_downtime must be at least 100"),
        ({"convergence": conv(downtime_delay=-1)}, "downtime_delay must be 0 or more"),
        ({"convergence": conv(completion_timeout=-0.5)}, "completion_timeout must be 0 or more"),
        ({"convergence": conv(progress_timeout=-1)}, "progress_timeout must be 0 or more"),
        ({"convergence": conv(timeout_action="postcopy"), "live": False}, "postcopy needs a live migration"),
        ({"convergence": conv(timeout_action="pause"), "live": False}, "convergence controls a live migration"),
        ({"convergence": conv(auto_converge_initial=30)}, "needs convergence.auto_converge: true"),
        ({"convergence": conv(auto_converge=True, auto_converge_increment=0)}, "percentage from 1 to 99"),
        ({"convergence": conv(), "max_downtime": 300}, "use convergence.max_downtime"),
        ({"convergence": conv(), "postcopy": 10}, "use convergence.timeout_action: postcopy"),
        ({"convergence": conv(), "lock": {"release": "before_send"}}, "cannot be combined with lock.release"),
    ],
)
def test_bad_input_is_refused_before_anything_moves(kw, text):
    with pytest.raises(ValidationError, match=text):
        build_plan(params(**kw), QEMU)


def test_bad_input_through_the_manager_touches_nothing():
    w, hv1, _hv2 = make_world("qemu")
    with pytest.raises(ValidationError, match="downtime_steps must be at least 3"):
        manager(w, convergence=conv(downtime_steps=1)).run()
    assert w.log == [] and hv1.domains["g1"]._state == "running"


def test_flags_and_parameters():
    plan = build_plan(params(convergence=conv(timeout_action="postcopy")), QEMU)
    assert "POSTCOPY" in plan.flags and "PAUSED" not in plan.flags and plan.handoff == "libvirt_postcopy"
    for action in ("abort", "pause"):
        plan = build_plan(params(convergence=conv(timeout_action=action)), QEMU)
        assert "PAUSED" in plan.flags and "POSTCOPY" not in plan.flags and plan.handoff == "verified"
    plan = build_plan(
        params(convergence=conv(auto_converge=True, auto_converge_initial=30, auto_converge_increment=15)), QEMU
    )
    assert "AUTO_CONVERGE" in plan.flags
    assert plan.params == {"auto_converge.initial": 30, "auto_converge.increment": 15}
    with pytest.raises(ValidationError, match="convergence not supported by the libxl driver"):
        build_plan(params(convergence=conv()), LIBXL)


# --------------------------------------------------------------------------- monitor decisions
def job(remaining, iteration=1, total=128 * MIB, processed=0, dirty_pages=0):
    return {
        "type": 2,
        "data_total": total,
        "memory_total": total,
        "data_remaining": remaining,
        "memory_remaining": remaining,
        "data_processed": processed,
        "memory_iteration": iteration,
        "memory_dirty_rate": dirty_pages,
        "memory_page_size": 4096,
    }


def sawtooth(elapsed, first_pass=5.0, hot=16 * MIB, period=0.6, total=128 * MIB):
    """A guest that never converges: a first pass, then the hot set re-sent over and over (a bitmap sync
    every ``period`` seconds)."""
    if elapsed < first_pass:
        return job(int(total * (1 - elapsed / first_pass)), iteration=1)
    into = (elapsed - first_pass) % period
    return job(int(hot * (1 - into / period)), iteration=2 + int((elapsed - first_pass) / period))


def drive(monitor, stats_at, until, every=0.25):
    decisions = []
    t = 0.0
    decisions += [(t, d) for d in monitor.observe(t, {})]
    while t < until:
        t = round(t + every, 3)
        decisions += [(t, d) for d in monitor.observe(t, stats_at(t))]
    return decisions


def plan_for(**kw):
    return convergence_ramp(conv(**kw), 128 * MIB)


def test_downtime_is_raised_step_by_step_and_recorded():
    m = ConvergenceMonitor(plan_for(downtime_delay=8, completion_timeout=0))  # a step every second
    decisions = drive(m, sawtooth, 12)
    raised = [(t, d["downtime_ms"]) for t, d in decisions if d["do"] == "downtime"]
    assert raised == [(0.0, 50), (1.0, 95), (2.0, 140), (3.0, 185), (4.0, 230), (5.0, 275), (6.0, 320),
                      (7.0, 365), (8.0, 410), (9.0, 455), (10.0, 500)]  # fmt: skip
    assert [s["step"] for s in m.steps] == list(range(11))
    assert m.steps[3]["data_remaining"] is not None and m.steps[3]["iteration"] == 1
    assert m.outcome(True) == "converged_after_steps"


def test_several_steps_due_at_once_jump_to_the_latest():
    m = ConvergenceMonitor(plan_for(downtime_delay=8, completion_timeout=0))
    assert [d["downtime_ms"] for d in m.observe(0.0, {})] == [50]
    assert [d["downtime_ms"] for d in m.observe(3.5, sawtooth(3.5))] == [185]
    assert [s["step"] for s in m.steps] == [0, 3]


def test_converged_at_the_first_step():
    m = ConvergenceMonitor(plan_for())
    drive(m, sawtooth, 3)
    assert m.outcome(True) == "converged"


def test_no_progress_aborts_a_guest_that_never_converges():
    m = ConvergenceMonitor(plan_for(max_downtime=100, downtime_steps=3, downtime_delay=8, progress_timeout=6))
    decisions = drive(m, sawtooth, 30)
    finals = [(t, d) for t, d in decisions if d["do"] != "downtime"]
    assert len(finals) == 1
    t, d = finals[0]
    assert d["do"] == "abort" and d["reason"] == "no_progress"
    assert 10 <= t <= 17, t  # the first pass (5 s) is progress, and the window after it; then 6 s without
    assert "no progress for 6.0s" in d["detail"]
    assert m.outcome(False) == "aborted_no_progress"


def test_a_slow_first_pass_is_progress():
    """128 MiB at 8 MiB/s: 16 s of first pass, a few percent less each 1 s window - never aborted for that."""
    m = ConvergenceMonitor(plan_for(progress_timeout=3, completion_timeout=0))
    decisions = drive(m, lambda t: sawtooth(t, first_pass=16.0), 16)
    assert [d for _t, d in decisions if d["do"] != "downtime"] == []
    decisions = drive(ConvergenceMonitor(plan_for(progress_timeout=3)), lambda t: sawtooth(t, first_pass=16.0), 30)
    [(t, abort)] = [(t, d) for t, d in decisions if d["do"] != "downtime"]
    assert abort["reason"] == "no_progress" and 19 <= t <= 22, t


def test_a_slowly_converging_guest_is_not_aborted():
    def shrinking(elapsed):  # auto-converge: the hot set shrinks by 30% every 3 s
        if elapsed < 5:
            return sawtooth(elapsed)
        hot = 16 * MIB * (0.7 ** int((elapsed - 5) / 3))
        return sawtooth(elapsed, hot=hot)

    m = ConvergenceMonitor(plan_for(progress_timeout=6, completion_timeout=0))
    decisions = drive(m, shrinking, 40)
    assert [d for _t, d in decisions if d["do"] != "downtime"] == []


def test_novas_lowest_sample_rule_would_have_been_fooled():
    """The sawtooth's bottom is reached on the first pass: a rule on the lowest sample sees no progress at all
    afterwards; the window means do see the first pass as progress and nothing more."""
    m = ConvergenceMonitor(plan_for(progress_timeout=8, completion_timeout=0))
    drive(m, sawtooth, 9)
    assert m.progress_at >= 5.0  # the last window of the first pass
    assert m.remaining_mean is not None and 6 * MIB < m.remaining_mean < 11 * MIB


@pytest.mark.parametrize(
    "action, outcome_ok, outcome_failed",
    [
        ("abort", None, "aborted_timeout"),
        ("postcopy", "switched_to_postcopy", "postcopy_failed"),
        ("pause", "forced_by_pause", "failed"),
    ],
)
def test_completion_timeout_takes_the_action_once(action, outcome_ok, outcome_failed):
    m = ConvergenceMonitor(plan_for(completion_timeout=64, timeout_action=action))  # 8 s
    decisions = drive(m, sawtooth, 20)
    finals = [(t, d) for t, d in decisions if d["do"] != "downtime"]
    assert [(t, d["do"], d["reason"]) for t, d in finals] == [(8.0, action, "timeout")]
    if outcome_ok:
        assert m.outcome(True) == outcome_ok
    assert m.outcome(False) == outcome_failed


def test_after_postcopy_or_pause_nothing_more_is_decided():
    m = ConvergenceMonitor(plan_for(completion_timeout=8, timeout_action="pause", downtime_delay=8))
    decisions = drive(m, sawtooth, 30)
    [paused_at] = [t for t, d in decisions if d["do"] == "pause"]
    assert paused_at == 1.0
    assert [d["do"] for t, d in decisions if t > paused_at] == []


def test_no_decision_before_the_job_runs():
    m = ConvergenceMonitor(plan_for(completion_timeout=8, progress_timeout=2))
    assert [d["do"] for d in m.observe(0.0, {})] == ["downtime"]
    assert m.observe(2.0, {"type": 0}) == []  # timeout over, but no job yet: nothing to switch or abort
    assert [d["do"] for d in m.observe(2.25, sawtooth(2.25))] == ["abort"]


def test_a_refused_action_is_not_reported_as_taken():
    m = ConvergenceMonitor(plan_for(completion_timeout=8, timeout_action="postcopy"))
    drive(m, sawtooth, 2)
    m.action_failed("post-copy migration is not enabled")
    assert m.outcome(True) == "converged" and m.outcome(False) == "failed"


def test_samples_stay_bounded_and_cover_the_whole_run():
    m = ConvergenceMonitor(plan_for(completion_timeout=0), max_samples=20, sample_every=0.5)
    drive(m, sawtooth, 300)
    m.finish(300.25, sawtooth(300.25))
    assert len(m.samples) <= 20
    assert m.samples[0]["elapsed_s"] <= 1.0 and m.samples[-1]["elapsed_s"] == 300.25
    assert m.thinned > 0 and m.sample_every > 0.5
    s = m.samples[-1]
    assert set(s) >= {"elapsed_s", "data_remaining", "dirty_rate_bps", "iteration", "downtime_ms"}
    assert s["downtime_ms"] == 500


# --------------------------------------------------------------------------- the manager on a fake hypervisor
class Clock:
    """Advances 0.5 s each time it is read: a job of a few reads lasts seconds of fake time."""

    def __init__(self):
        self.t = 0.0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.t += 0.5
            return self.t


class BusyDomain(FakeDomain):
    """A qemu source whose migration runs until the module aborts it, switches it to post-copy or pauses it."""

    def __init__(self, world, host, fail_after_switch=False):
        super().__init__(world, host)
        self.calls = []
        self.event = threading.Event()
        self.how = None
        self.fail_after_switch = fail_after_switch
        self.downtimes = []

    def XMLDesc(self, _flags=0):
        return super().XMLDesc().replace("<devices>", "<memory unit='MiB'>128</memory><devices>")

    def jobStats(self, flags=0):
        if flags:
            return {"time_elapsed": 9000, "downtime": 300, "data_total": 1000, "memory_iteration": 40}
        return job(16 * MIB, iteration=len(self.calls) + 2)

    def migrateSetMaxDowntime(self, ms, _flags=0):
        self.downtimes.append(ms)

    def abortJob(self):
        self.how = "abort"
        self.event.set()

    def migrateStartPostCopy(self, _flags=0):
        self.how = "postcopy"
        self.world.release("hv1")  # the source stops at the switch
        self.event.set()

    def suspend(self):
        super().suspend()
        self.how = "pause"
        self.event.set()

    def migrateToURI3(self, uri, params, flags):
        self.calls.append(flags)
        w = self.world
        dst = w.hosts["hv2"]
        dst.domains["g1"] = FakeDomain(w, "hv2", state="paused")
        assert self.event.wait(10), "the module never acted on the job"
        if self.how == "abort":
            del dst.domains["g1"]
            raise libvirt.libvirtError("operation aborted: migration out job: canceled by client")
        if self.how == "postcopy":
            assert flags & libvirt.VIR_MIGRATE_POSTCOPY and not flags & libvirt.VIR_MIGRATE_PAUSED
            dst.domains["g1"].resume()  # the destination runs and takes the leases
            if self.fail_after_switch:
                dst.domains["g1"]._state = "paused"
                self._state = "paused"
                raise libvirt.libvirtError("operation failed: job 'migration out' failed: post-copy failed")
        else:
            self._state = "paused"
            w.release("hv1")
            if not flags & libvirt.VIR_MIGRATE_PAUSED:
                dst.domains["g1"].resume()
        self._state = "shutoff"
        del w.hosts["hv1"].domains["g1"]


def busy_world(**kw):
    w, hv1, hv2 = make_world("qemu")
    hv1.domains["g1"] = BusyDomain(w, "hv1", **kw)
    return w, hv1, hv2


def busy_manager(w, **conv_kw):
    m = manager(w, convergence=conv(**conv_kw))
    m.clock = Clock()
    return m


def test_manager_aborts_on_no_progress_and_the_guest_stays_on_the_source():
    w, hv1, hv2 = busy_world()
    with pytest.raises(VirtError) as info:
        busy_manager(w, progress_timeout=3, completion_timeout=0, downtime_delay=8).run()
    err = info.value
    assert err.result["outcome"] == "aborted_no_progress"
    assert "aborted (no progress for 3.0s" in err.msg and "keeps running on hv1 holding its leases" in err.msg
    assert [c["name"] for c in err.result["lock_checkpoints"]][-3:] == [
        "perform/send",
        "finish/dest_clean",
        "confirm/source_kept",
    ]
    assert w.locks == {r: "hv1" for r in RESOURCES} and "g1" not in hv2.domains
    assert hv1.domains["g1"].downtimes[0] == 50 and err.result["progress"]["steps"][0]["step"] == 0


def test_manager_pauses_to_complete_with_the_verified_handoff():
    w, _hv1, hv2 = busy_world()
    result = busy_manager(w, completion_timeout=16, timeout_action="pause").run()  # 2 s of fake time
    assert result["outcome"] == "forced_by_pause"
    names = [c["name"] for c in result["lock_checkpoints"]]
    assert names[0] == "begin/inquire" and "perform/paused_to_complete" in names
    # the forced pause released the leases (the source's SUSPENDED event): ordered by when it happened
    wanted = ["prepare/register", "perform/send", "perform/source_released", "finish/resumed"]
    wanted += ["finish/dest_acquired", "confirm/source_stopped"]
    assert sorted(n for n in names if n not in ("begin/inquire", "perform/paused_to_complete")) == sorted(wanted)
    assert names.index("perform/source_released") < names.index("finish/resumed") < names.index("finish/dest_acquired")
    assert all(c["ok"] for c in result["lock_checkpoints"])
    assert w.locks == {r: "hv2" for r in RESOURCES} and hv2.domains["g1"]._state == "running"
    assert result["progress"]["action"]["do"] == "pause"


def test_manager_switches_to_postcopy_and_verifies_after():
    w, _hv1, hv2 = busy_world()
    result = busy_manager(w, completion_timeout=16, timeout_action="postcopy").run()
    assert result["outcome"] == "switched_to_postcopy"
    names = [c["name"] for c in result["lock_checkpoints"]]
    # ordered by when things happened: the destination resumed when post-copy began
    assert "perform/postcopy_switch" in names and "finish/resumed" in names
    assert names[-2:] == ["finish/dest_acquired", "confirm/source_stopped"]
    assert result["plan"]["handoff"] == "libvirt_postcopy"
    assert w.locks == {r: "hv2" for r in RESOURCES} and hv2.domains["g1"]._state == "running"


def test_manager_reports_a_failure_after_the_switch_plainly_and_touches_nothing():
    w, hv1, hv2 = busy_world(fail_after_switch=True)
    with pytest.raises(VirtError) as info:
        busy_manager(w, completion_timeout=16, timeout_action="postcopy").run()
    err = info.value
    assert err.result["outcome"] == "postcopy_failed" and err.result["changed"] is True
    assert "cannot be undone" in err.msg and "runs nowhere" in err.msg
    assert "hv1: paused" in err.msg and "hv2: paused" in err.msg
    last = err.result["lock_checkpoints"][-1]
    assert last["name"] == "perform/postcopy_failed" and last["ok"] is False and last["leases"]
    assert hv1.domains["g1"]._state == "paused" and hv2.domains["g1"]._state == "paused"


def test_a_destination_libvirt_cannot_pause_after_a_failed_post_copy_is_reported_running_there():
    # libvirt 9.0: the destination runs with reason post-copy failed, and pausing it waits for the incoming
    # job that libvirt keeps; the source's QEMU is gone
    w, hv1, hv2 = busy_world(fail_after_switch=True)

    def refuse():
        raise libvirt.libvirtError("Timed out during operation: cannot acquire state change lock")

    def leave(**_kw):
        hv1.domains["g1"]._state = "shutoff"
        hv1.domains["g1"].reason = 3
        hv2.domains["g1"].set("running", 11)
        hv2.domains["g1"].suspend = refuse
        raise libvirt.libvirtError("End of file while reading data: Input/output error")

    src = hv1.domains["g1"]
    plain = src.migrateToURI3

    def send(uri, params, flags):
        try:
            plain(uri, params, flags)
        except libvirt.libvirtError:
            leave()

    src.migrateToURI3 = send
    with pytest.raises(VirtError) as info:
        busy_manager(w, completion_timeout=16, timeout_action="postcopy").run()
    msg = info.value.msg
    assert info.value.result["outcome"] == "postcopy_failed"
    assert "hv2: running (post-copy failed), could not be paused: " in msg and "shutoff (crashed)" in msg
    assert "runs on hv2 only as far as its memory arrived there" in msg and "runs nowhere" not in msg
    assert "a post-copy resume cannot help" in msg


class EarlySwitchDomain(BusyDomain):
    """A source whose QEMU refuses the switch until libvirt has set its migration up (Begin and Prepare first)."""

    refusals = 2

    def migrateStartPostCopy(self, _flags=0):
        if self.refusals:
            self.refusals -= 1
            raise libvirt.libvirtError(
                "internal error: unable to execute QEMU command 'migrate-start-postcopy': Enable postcopy with "
                "migrate_set_capability before the start of migration"
            )
        super().migrateStartPostCopy(_flags)


@pytest.mark.parametrize("fail_after_switch", [False, True])
def test_a_postcopy_switch_refused_before_the_job_began_is_tried_again(fail_after_switch):
    w, hv1, hv2 = make_world("qemu")
    src = hv1.domains["g1"] = EarlySwitchDomain(w, "hv1", fail_after_switch=fail_after_switch)
    m = manager(w, postcopy=1, postcopy_bandwidth=1)
    m.clock = Clock()
    if not fail_after_switch:
        result = m.run()
        assert hv2.domains["g1"]._state == "running" and not result.get("warnings")
    else:
        with pytest.raises(VirtError) as info:
            m.run()
        result = info.value.result
        # a plain ``postcopy`` run reports the failed post-copy as its outcome too
        assert result["outcome"] == "postcopy_failed" and "cannot be undone" in info.value.msg
    assert src.refusals == 0 and src.how == "postcopy"
    assert "perform/postcopy_switch" in [c["name"] for c in result["lock_checkpoints"]]


def test_check_mode_prints_the_plan_for_the_guest_size():
    w, _hv1, _hv2 = make_world("qemu")
    result = manager(w, check_mode=True, convergence=conv(completion_timeout=64)).run()
    plan = result["plan"]["convergence_plan"]
    assert plan["memory_bytes"] == 0 and plan["data_gib"] == 0  # the fake's XML has no <memory>
    assert "convergence: downtime 50->500 ms" in result["would"]
    assert w.log == [] and "outcome" not in result
