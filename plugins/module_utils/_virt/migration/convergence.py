# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Convergence control of a live migration, without libvirt: the plan and the monitor's decisions.

- :func:`convergence_ramp`: the ``convergence`` option and the guest's size -> the downtime ramp (Nova's
  formula: from ``max_downtime / downtime_steps`` up to ``max_downtime`` in ``downtime_steps`` equal
  raises, one every ``downtime_delay`` seconds per GiB), the completion timeout (per GiB), the progress
  timeout and the auto-converge throttle.
- :class:`ConvergenceMonitor`: fed the source's job statistics (``virDomainGetJobStats``) as the job
  runs, it says what to do - raise the allowed downtime, abort, switch to post-copy, pause the guest -
  keeps a bounded series of samples and names the outcome. The migration manager carries the decisions
  out on libvirt from its one monitoring loop; nothing here touches libvirt, so it is tested on synthetic
  statistics.

Progress. Nova compared every sample's data remaining with the lowest ever seen. The data remaining
is a sawtooth - it falls as a pass sends, then QEMU syncs its dirty bitmap and it jumps back up - so
that low is reached early and then beaten again only when a sample happens to land near the bottom of a
tooth: a guest that never converges survives by chance, one that converges slowly is aborted by chance.
Here the data remaining is averaged over windows of a third of ``progress_timeout`` (at least 1 s);
a window whose mean is at least :data:`PROGRESS_MARGIN` below the lowest mean that counted so far is
progress (on the lab the means of a guest that never converges vary by up to a fifth from window to
window, hence a quarter). During the first pass, which only falls, any lower mean is progress, however
slow the link; a guest that dirties its memory as fast as the link sends it then settles on one mean and
stops making any.
"""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError

GIB = 1024**3
MIB = 1024**2
TIMEOUT_ACTIONS = ("abort", "postcopy", "pause")
# What Nova's libvirt driver uses (live_migration_downtime, _steps, _delay, _completion_timeout,
# _timeout_action); its progress timeout (150 s) was removed, so it is off here by default.
DEFAULTS = {
    "max_downtime": 500,
    "downtime_steps": 10,
    "downtime_delay": 75.0,
    "completion_timeout": 800.0,
    "timeout_action": "abort",
    "progress_timeout": 0.0,
}
MIN_DOWNTIME = 100  # ms, as Nova
MIN_STEPS = 3
PROGRESS_MARGIN = 0.25  # a window's mean data remaining must be this much lower to count as progress
MAX_SAMPLES = 60
SAMPLE_EVERY = 0.5  # seconds between samples at first; doubled each time the series is thinned

CONVERGENCE_OPTIONS = {
    "max_downtime": {"type": "int", "default": DEFAULTS["max_downtime"]},
    "downtime_steps": {"type": "int", "default": DEFAULTS["downtime_steps"]},
    "downtime_delay": {"type": "float", "default": DEFAULTS["downtime_delay"]},
    "completion_timeout": {"type": "float", "default": DEFAULTS["completion_timeout"]},
    "timeout_action": {"type": "str", "choices": list(TIMEOUT_ACTIONS), "default": DEFAULTS["timeout_action"]},
    "progress_timeout": {"type": "float", "default": DEFAULTS["progress_timeout"]},
    "auto_converge": {"type": "bool", "default": False},
    "auto_converge_initial": {"type": "int"},
    "auto_converge_increment": {"type": "int"},
}


def _get(conv, key):
    value = conv.get(key)
    return DEFAULTS.get(key) if value is None else value


def validate_convergence(conv, live=True):
    """Refuse contradictory or out-of-range settings (nothing has been touched yet)."""
    max_downtime = _get(conv, "max_downtime")
    steps = _get(conv, "downtime_steps")
    if max_downtime < MIN_DOWNTIME:
        raise ValidationError(
            "convergence.max_downtime must be at least {} ms (as Nova's live_migration_downtime), not {}".format(
                MIN_DOWNTIME, max_downtime
            )
        )
    if steps < MIN_STEPS:
        raise ValidationError(
            "convergence.downtime_steps must be at least {} (as Nova's live_migration_downtime_steps), not {}".format(
                MIN_STEPS, steps
            )
        )
    for key in ("downtime_delay", "completion_timeout", "progress_timeout"):
        if _get(conv, key) < 0:
            raise ValidationError("convergence.{} must be 0 or more, not {}".format(key, _get(conv, key)))
    action = _get(conv, "timeout_action")
    if not live:
        raise ValidationError(
            "convergence controls a live migration: set live: true or drop convergence "
            "(timeout_action {} needs the guest running during the copy)".format(action)
        )
    for key in ("auto_converge_initial", "auto_converge_increment"):
        value = conv.get(key)
        if value is None:
            continue
        if not conv.get("auto_converge"):
            raise ValidationError("convergence.{} needs convergence.auto_converge: true".format(key))
        if not 1 <= value <= 99:
            raise ValidationError("convergence.{} is a percentage from 1 to 99, not {}".format(key, value))


def data_gib(memory_bytes, disk_bytes=0, floor_gib=0.0):
    """GiB the migration has to move: the guest's memory plus the disks it copies.

    Nova counts each of them as at least 2 GiB (``floor_gib=2`` reproduces its figures); here the real
    size is used, so a small guest gets a short ramp.
    """
    ram = memory_bytes / GIB
    disk = disk_bytes / GIB
    if floor_gib:
        ram = max(ram, floor_gib)
        disk = max(disk, floor_gib) if disk_bytes else 0.0
    return ram + disk


def downtime_ramp(max_downtime, steps, delay):
    """Nova's ``downtime_steps``: ``steps + 1`` pairs (seconds after the start, allowed downtime in ms).

    Nova truncates ``base + offset * i``, which can leave its last step a millisecond short of the
    maximum (99 for 100 ms in 3 steps); here the last step is the maximum.
    """
    base = max_downtime / steps
    offset = (max_downtime - base) / steps
    ramp = [(round(delay * i, 3), int(base + offset * i)) for i in range(steps + 1)]
    ramp[-1] = (ramp[-1][0], max_downtime)
    return ramp


def convergence_ramp(conv, memory_bytes, disk_bytes=0, live=True, floor_gib=0.0):
    """The convergence plan for a guest of this size: ramp, timeouts, action and auto-converge."""
    validate_convergence(conv, live=live)
    gib = data_gib(memory_bytes, disk_bytes, floor_gib)
    delay = _get(conv, "downtime_delay") * gib
    completion = _get(conv, "completion_timeout") * gib
    ramp = downtime_ramp(_get(conv, "max_downtime"), _get(conv, "downtime_steps"), delay)
    plan = {
        "data_gib": round(gib, 4),
        "memory_bytes": memory_bytes,
        "disk_bytes": disk_bytes,
        "max_downtime": _get(conv, "max_downtime"),
        "downtime_steps": [{"step": i, "after_s": at, "downtime_ms": ms} for i, (at, ms) in enumerate(ramp)],
        "step_delay_s": round(delay, 3),
        "completion_timeout_s": round(float(completion), 3) if completion else None,
        "timeout_action": _get(conv, "timeout_action"),
        "progress_timeout_s": float(_get(conv, "progress_timeout")) or None,
        "auto_converge": bool(conv.get("auto_converge")),
        "auto_converge_initial": conv.get("auto_converge_initial"),
        "auto_converge_increment": conv.get("auto_converge_increment"),
        "warnings": [],
    }
    ramp_end = ramp[-1][0]
    if plan["progress_timeout_s"] and plan["progress_timeout_s"] < delay:
        plan["warnings"].append(
            "convergence.progress_timeout ({}s) is shorter than one downtime step ({}s): a guest that needs a "
            "higher downtime may be aborted before it is allowed".format(plan["progress_timeout_s"], round(delay, 1))
        )
    if plan["completion_timeout_s"] and plan["completion_timeout_s"] < ramp_end:
        plan["warnings"].append(
            "the completion timeout ({}s) comes before the last downtime step ({}s)".format(
                plan["completion_timeout_s"], ramp_end
            )
        )
    return plan


def describe_ramp(plan):
    """One line for check mode and messages."""
    steps = plan["downtime_steps"]
    text = "downtime {}->{} ms in {} raises every {}s ({:.3f} GiB to move)".format(
        steps[0]["downtime_ms"], steps[-1]["downtime_ms"], len(steps) - 1, plan["step_delay_s"], plan["data_gib"]
    )
    if plan["completion_timeout_s"]:
        text += "; after {}s: {}".format(plan["completion_timeout_s"], plan["timeout_action"])
    if plan["progress_timeout_s"]:
        text += "; abort after {}s without progress".format(plan["progress_timeout_s"])
    if plan["auto_converge"]:
        text += "; auto-converge (throttle {}% + {}%)".format(
            plan["auto_converge_initial"] or "20", plan["auto_converge_increment"] or "10"
        )
    return text


# --------------------------------------------------------------------------- the monitor
def _num(stats, *keys):
    for key in keys:
        value = stats.get(key)
        if value is not None:
            return value
    return None


def job_active(stats):
    """Whether these statistics describe a running migration job that has started moving memory."""
    if not stats:
        return False
    return stats.get("type") in (1, 2) and _num(stats, "memory_total", "data_total") not in (None, 0)


class ConvergenceMonitor:
    """Decisions on a migration job from its statistics; pure logic.

    ``observe(elapsed, stats)`` returns a list of decisions, each a dict with ``do``:
    ``downtime`` (``downtime_ms``, ``step``), or one final action ``abort`` (``reason``: ``no_progress``
    or ``timeout``), ``postcopy`` or ``pause``. The caller carries them out and may report a failed one
    with :meth:`action_failed`. After ``postcopy`` or ``pause`` no further decision is taken.
    """

    def __init__(self, plan, max_samples=MAX_SAMPLES, sample_every=SAMPLE_EVERY):
        self.plan = plan
        self.max_samples = max(4, max_samples)
        self.sample_every = sample_every
        self.samples = []
        self.thinned = 0
        self.steps = []  # applied downtime steps
        self.step = -1
        self.downtime = None
        self.action = None  # {"do", "reason", "elapsed_s", "detail"}
        self.progress_at = None
        self.window_s = max(1.0, (plan.get("progress_timeout_s") or 6.0) / 3.0)
        self.remaining_mean = None  # mean data remaining of the last complete window
        self._credited_mean = None
        self._window = None  # [start, sum, count]
        self._last_sample_at = None

    # ---- decisions
    def observe(self, elapsed, stats):
        decisions = []
        active = job_active(stats)
        if active:
            self._track_progress(elapsed, stats)
        if self.action is None or self.action["do"] == "abort_failed":
            due = [s for s in self.plan["downtime_steps"] if s["after_s"] <= elapsed]
            if due and due[-1]["step"] > self.step:
                step = due[-1]
                self.step = step["step"]
                self.downtime = step["downtime_ms"]
                self.steps.append(
                    {
                        "step": step["step"],
                        "downtime_ms": step["downtime_ms"],
                        "elapsed_s": round(elapsed, 3),
                        "data_remaining": _num(stats, "data_remaining") if active else None,
                        "iteration": _num(stats, "memory_iteration") if active else None,
                    }
                )
                decisions.append({"do": "downtime", "downtime_ms": step["downtime_ms"], "step": step["step"]})
        if active and self.action is None:
            final = self._final_action(elapsed)
            if final is not None:
                self.action = final
                decisions.append(dict(final))
        if active:
            self._sample(elapsed, stats)
        return decisions

    def _final_action(self, elapsed):
        progress_timeout = self.plan.get("progress_timeout_s")
        if progress_timeout and self.progress_at is not None and elapsed - self.progress_at >= progress_timeout:
            return {
                "do": "abort",
                "reason": "no_progress",
                "elapsed_s": round(elapsed, 3),
                "detail": "no progress for {}s: the data remaining averages {} (lowest average {}, last "
                "progress at {}s)".format(
                    progress_timeout,
                    _mib(self.remaining_mean),
                    _mib(self._credited_mean),
                    round(self.progress_at, 1),
                ),
            }
        completion = self.plan.get("completion_timeout_s")
        if completion and elapsed >= completion:
            action = self.plan.get("timeout_action") or "abort"
            out = {
                "do": action,
                "reason": "timeout",
                "elapsed_s": round(elapsed, 3),
                "detail": "not complete after the {}s completion timeout".format(completion),
            }
            return out
        return None

    def action_failed(self, error):
        """The caller could not carry out the final action (the job may have just ended)."""
        if self.action is not None:
            self.action["failed"] = str(error)

    # ---- progress
    def _track_progress(self, elapsed, stats):
        remaining = _num(stats, "data_remaining", "memory_remaining") or 0
        first_pass = (_num(stats, "memory_iteration") or 0) <= 1
        if self._window is None:
            self._window = [elapsed, 0, 0]
            if self.progress_at is None:
                self.progress_at = elapsed
        self._window[1] += remaining
        self._window[2] += 1
        if elapsed - self._window[0] < self.window_s:
            return
        mean = self._window[1] / self._window[2]
        self._window = [elapsed, 0, 0]
        self.remaining_mean = int(mean)
        # the first pass only falls (slowly, on a slow link): any lower mean is progress; later passes need
        # the margin to tell a shrinking dirty set from the noise of the sawtooth
        margin = 0 if first_pass else PROGRESS_MARGIN
        if self._credited_mean is None or mean < self._credited_mean * (1 - margin):
            self._credited_mean = mean
            self.progress_at = elapsed

    # ---- samples
    def _sample(self, elapsed, stats, force=False):
        if not force and self._last_sample_at is not None and elapsed - self._last_sample_at < self.sample_every:
            return
        self._last_sample_at = elapsed
        rate = _num(stats, "memory_dirty_rate")
        page = _num(stats, "memory_page_size") or 4096
        self.samples.append(
            {
                "elapsed_s": round(elapsed, 3),
                "data_remaining": _num(stats, "data_remaining"),
                "data_total": _num(stats, "data_total"),
                "dirty_rate_bps": rate * page if rate is not None else None,
                "remaining_mean": self.remaining_mean,
                "iteration": _num(stats, "memory_iteration"),
                "downtime_ms": self.downtime,
                "throttle": _num(stats, "auto_converge_throttle"),
                "memory_bps": _num(stats, "memory_bps"),
            }
        )
        if len(self.samples) > self.max_samples:
            # keep the first and the newest, drop every other one: the series covers the whole run
            keep = self.samples[:-1][::2] + [self.samples[-1]]
            self.thinned += len(self.samples) - len(keep)
            self.samples = keep
            self.sample_every *= 2

    def finish(self, elapsed, stats=None):
        """A last sample (the final statistics, when known)."""
        if stats and job_active(stats):
            self._sample(elapsed, stats, force=True)

    # ---- outcome
    def outcome(self, completed, aborted_by_timeout=False):
        action = self.action or {}
        done = action.get("do") if not action.get("failed") else None
        if completed:
            if done == "postcopy":
                return "switched_to_postcopy"
            if done == "pause":
                return "forced_by_pause"
            if self.steps and self.downtime is not None and self.downtime > self.steps[0]["downtime_ms"]:
                return "converged_after_steps"
            return "converged"
        if done == "postcopy":
            return "postcopy_failed"
        if done == "abort":
            return "aborted_no_progress" if action.get("reason") == "no_progress" else "aborted_timeout"
        if aborted_by_timeout:
            return "aborted_timeout"
        return "failed"

    def report(self):
        return {
            "samples": list(self.samples),
            "thinned": self.thinned,
            "sample_every_s": self.sample_every,
        }


def _mib(value):
    return "?" if value is None else "{:.1f} MiB".format(value / MIB)
