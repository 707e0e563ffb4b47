# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a migration will do: its options, libvirt flags and typed parameters, and its checkpoints.

:data:`MIGRATE_ARGUMENT_SPEC` and :func:`build_plan` turn options into libvirt flags and parameters,
checked against the source's driver profile (libxl accepts a subset) before anything is touched.
"""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.convergence import (
    CONVERGENCE_OPTIONS,
    validate_convergence,
)

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
    "postcopy_bandwidth": {"type": "int"},
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
    "bandwidth.postcopy",
    "convergence",
    "auto_converge.initial",
    "auto_converge.increment",
)
_PARAMS_BY_PROFILE = {"qemu": _QEMU_PARAMS, "test": _QEMU_PARAMS}
# the module's option for each typed parameter whose name differs from it, for messages
_OPTION_OF_PARAM = {"parallel.connections": "parallel_connections", "bandwidth.postcopy": "postcopy_bandwidth"}


class Plan:
    """What a migration will do, decided before anything moves.

    ``mode`` and ``api`` (migrateToURI3, or migrate3 for direct); ``flags`` (names) and ``flags_value``;
    ``params`` (libvirt's typed parameters); ``max_downtime`` (ms), ``postcopy_after`` (s), ``timeout`` (s);
    ``convergence`` (the options) and ``convergence_plan`` (the ramp for this guest, set by the preflight);
    ``release`` (after_send or before_send), ``handoff`` (verified, or libvirt_postcopy), ``verify``,
    ``acquire_timeout`` (s); the driver's ``leases_taken`` and name (``driver``).
    """

    FIELDS = (
        "mode",
        "api",
        "flags",
        "flags_value",
        "params",
        "max_downtime",
        "postcopy_after",
        "convergence",
        "timeout",
        "release",
        "handoff",
        "verify",
        "acquire_timeout",
        "leases_taken",
        "driver",
    )
    __slots__ = FIELDS + ("convergence_plan",)

    def __init__(self, **values):
        for field in self.FIELDS:
            setattr(self, field, values[field])
        self.convergence_plan = None

    def as_dict(self):
        """The plan as the module returns it (``plan``)."""
        out = dict((field, getattr(self, field)) for field in self.FIELDS)
        if self.convergence_plan is not None:
            out["convergence_plan"] = self.convergence_plan
        return out


def _positive(params, key):
    value = params.get(key)
    if value is not None and value <= 0:
        raise ValidationError("{} must be a positive number, not {}".format(key, value))
    return value


def build_plan(params, profile):
    """The Plan of a migration: flag names and value, typed parameters, handoff style.

    Raises ValidationError for contradictory options or flags the driver does not accept; nothing has
    been touched then.
    """
    lock = params.get("lock") or {}
    release = lock.get("release") or RELEASE_AFTER_SEND
    live = params.get("live", True)
    mode = params.get("mode") or "peer2peer"
    postcopy = _positive(params, "postcopy")
    for key in ("bandwidth", "postcopy_bandwidth", "max_downtime", "parallel_connections", "timeout"):
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
    if params.get("postcopy_bandwidth") and not postcopy_flag:
        raise ValidationError(
            "postcopy_bandwidth limits the post-copy phase, which this migration does not have: set postcopy (or "
            "convergence.timeout_action: postcopy) too, or drop postcopy_bandwidth"
        )

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
    if params.get("postcopy_bandwidth"):
        typed["bandwidth.postcopy"] = params["postcopy_bandwidth"]
        wanted_params.append("bandwidth.postcopy")
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
                ", ".join(_OPTION_OF_PARAM.get(p, p) for p in refused), profile.name
            )
        )
    return Plan(
        mode=mode,
        api="migrate3" if mode == "direct" else "migrateToURI3",
        flags=names,
        flags_value=value,
        params=typed,
        max_downtime=params.get("max_downtime"),
        postcopy_after=postcopy,
        convergence=conv,
        timeout=params.get("timeout"),
        release=release,
        handoff=handoff,
        verify=lock.get("verify", True),
        acquire_timeout=acquire_timeout or 0,
        leases_taken=profile.leases_taken,
        driver=profile.name,
    )


def checkpoint_order(release=RELEASE_AFTER_SEND, handoff="verified", driver="qemu"):
    """The checkpoint names of a successful migration, in the order of their ``at`` (documented in the module).

    With QEMU the source's vCPUs stop for the final part of the copy and libvirt releases its leases
    then, before the send completes; the destination resumes once it holds the whole guest. libxl (after
    libvirt's lock-ordering fix) releases on the source after a successful send and takes the leases on the
    destination before it unpauses. ``confirm/source_stopped`` comes last: the module waits for it.
    """
    if release == RELEASE_BEFORE_SEND:
        return [
            "begin/inquire",
            "perform/source_paused",
            "perform/source_released",
            "prepare/register",
            "perform/send",
            "finish/resumed",
            "finish/dest_acquired",
            "confirm/source_stopped",
        ]
    if driver == "libxl":
        return [
            "begin/inquire",
            "prepare/register",
            "perform/send",
            "perform/source_released",
            "finish/dest_acquired",
            "finish/resumed",
            "confirm/source_stopped",
        ]
    return [
        "begin/inquire",
        "prepare/register",
        "perform/source_released",
        "perform/send",
        "finish/resumed",
        "finish/dest_acquired",
        "confirm/source_stopped",
    ]
