# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every object manager shares: its parameters and result, the actions it records, the partial
result a failure carries, autostart, the diff it reports, and the parsing of the user's XML; and the
one sequence every defined object (domain, network, storage pool) is converged by (:class:`DefinedManager`).

The sequence: desired -> lookup -> define or redefine (with what libvirt generated kept) -> the kind's
live changes -> autostart -> state -> pending restart -> diff (only in diff mode) -> summary. A kind fills
in its spec builder, its define call, its state step and its live-change step; the single-object modules
and ``lockstep.virt.apply`` run the same code, the latter with lookups answered from one bulk read
(``objects.HostCache``) instead of one call each (``objects.Host``)."""

from __future__ import annotations

import abc
import copy
from collections import namedtuple

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    ValidationError,
    VirtError,
    error_code,
    from_libvirt_error,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managed import compared_mark
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import Host
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.common import validate_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import (
    compare,
    elements,
    etree,
    holds_secrets,
    parse_xml,
    to_text,
)

# How a kind builds its desired element from a spec: build(name, spec, normalized=True) after
# normalize(spec, validated=True).
FromSpec = namedtuple("FromSpec", "build normalize")


def _flag_unsupported(exc):
    """Whether a define failed only because the driver does not have the flag it was given."""
    code = exc.get_error_code()
    if code == error_code("NO_SUPPORT", 3):
        return True
    return code == error_code("INVALID_ARG", 8) and "unsupported flags" in (exc.get_error_message() or "")


def diff_text(xml_text, state, autostart):
    """One side of a diff: the object's state and autostart, then its XML."""
    return "state: {}\nautostart: {}\n{}".format(state, "yes" if autostart else "no", xml_text or "")


# The mutually exclusive options of every module of an object defined from xml or spec.
DEFINITION_MUTUALLY_EXCLUSIVE = [("xml", "spec")]


def definition_argument_spec(states, spec_options, **more):
    """The argument spec of a module managing one object defined from ``xml`` or ``spec``: name, state
    (``states``, default present), xml, spec (``spec_options``), autostart, restart_on_change, ``more``."""
    out = {
        "name": {"type": "str", "required": True},
        "state": {"type": "str", "choices": states, "default": "present"},
        "xml": {"type": "str"},
        "spec": {"type": "dict", "options": spec_options},
        "autostart": {"type": "bool"},
        "restart_on_change": {"type": "bool", "default": False},
    }
    out.update(more)
    return out


def keep_generated(desired, existing, tags=("uuid",)):
    """Copy of ``desired`` with the top-level elements ``tags`` that libvirt generated for ``existing``
    (its UUID, a network's bridge MAC) where ``desired`` gives none, so a redefinition keeps them."""
    out = copy.deepcopy(desired)
    if existing is None:
        return out
    for tag in tags:
        if elements(out, tag):
            continue
        old = elements(existing, tag)
        if old:
            names = elements(out, "name")
            out.insert(out.index(names[0]) + 1 if names else 0, copy.deepcopy(old[0]))
    return out


def user_xml(name, text, root_tag):
    """Parse the user's XML for the object ``name``: safe parse, <name> added when missing, refused
    when it names another object."""
    root = parse_xml(text, root_tag, "xml")
    names = elements(root, "name")
    if not names:
        el = etree.Element("name")
        el.text = name
        root.insert(0, el)
    elif (names[0].text or "").strip() != name:
        raise ValidationError(
            "the <name> in xml ({!r}) differs from name ({!r})".format((names[0].text or "").strip(), name)
        )
    return root


class Manager(abc.ABC):
    """Bring one object of ``KIND`` (an objects.Kind) to the state the module parameters describe.

    A subclass writes ``_run()``; :meth:`run` returns its result or raises VirtError carrying the
    partial result (``changed``, ``actions``: see :meth:`_fail`). ``host``: where lookups and XML reads
    go (an objects.Host, or a HostCache shared by the objects of one run); ``brief``: leave out the
    object's summary (and, for a domain, its lease probe): ``lockstep.virt.apply`` reports less per object.
    """

    KIND = None
    RESULT = {}  # what the result holds besides changed and actions, as it starts
    REMOVE_STATES = ("absent",)

    def __init__(self, conn, params, check_mode=False, diff_mode=False, host=None, brief=False):
        self.conn = conn
        self.params = params
        self.check_mode = check_mode
        self.diff_mode = diff_mode
        self.host = host or Host(conn)
        self.brief = brief
        self.name = params["name"]
        self.label = self.KIND.label.format(self.name)  # how messages and diff headers name the object
        self._validated = False
        self.existed = None  # whether the object was there before the run (None: not looked up)
        self.result = {"changed": False, "actions": []}
        self.result.update(copy.deepcopy(self.RESULT))

    def _act(self, action):
        self.result["changed"] = True
        self.result["actions"].append(action)

    def run(self):
        try:
            self.validate()
            return self._run()
        except VirtError as err:
            raise self.with_result(err) from None

    def validate(self):
        """Check the parameters before anything is looked up or changed (once); raise ValidationError."""
        if not self._validated:
            self._validate_name()
            self._validate()
            self._validated = True

    def _validate(self):  # noqa: B027 - optional hook: a kind without checks of its own keeps it
        """The kind's own checks of its parameters (optional: none by default)."""

    def outcome(self):
        """created, changed, unchanged or removed: what the run did to the object."""
        if not self.result["changed"]:
            return "unchanged"
        if self.params.get("state") in self.REMOVE_STATES:
            return "removed" if self.existed else "unchanged"
        return "changed" if self.existed else "created"

    def _validate_name(self):
        validate_name(self.name, self.KIND.noun)

    @abc.abstractmethod
    def _run(self):
        """The kind's own sequence: returns the result, raises VirtError."""

    def with_result(self, err):
        """``err`` carrying the partial result of this run (``raise self.with_result(err)``)."""
        err.result.update(changed=self.result["changed"], actions=list(self.result["actions"]))
        return err

    def _diff(self, before, after, after_what):
        """The diff of the object as it is on the host and as it is left (``after_what``: desired, absent)."""
        return {
            "before": before,
            "after": after,
            "before_header": "{} (on {})".format(self.label, self.conn.hostname),
            "after_header": "{} ({})".format(self.label, after_what),
        }

    def _autostart(self, obj, predicted):
        """Set autostart to the ``autostart`` parameter (when given and different); ``predicted`` follows."""
        want = self.params.get("autostart")
        if want is None or predicted["autostart"] == want:
            return
        self._act("autostart" if want else "no_autostart")
        predicted["autostart"] = want
        if not self.check_mode:
            with libvirt_errors("cannot set autostart of {}".format(self.label)):
                obj.setAutostart(1 if want else 0)


class DefinedManager(Manager):
    """The converge sequence of an object libvirt defines from XML (domain, network, storage pool).

    A kind fills in:

    * ``_from_xml(text)``, ``_from_spec(spec)`` - the desired XML element, checked before anything is
      looked up (``_desired(existing)`` when it depends on what exists);
    * ``_define_xml(text, flags)`` - libvirt's define call, ``VALIDATE_FLAG`` its schema-validation flag;
      ``GENERATED`` - what a redefinition keeps;
    * ``_check_desired(desired, existing)`` - refusals and preparations before the definition changes;
    * ``_live_change(obj, drift, redefined, before)`` - changes applied to what runs without a restart;
    * ``_state(obj, predicted)``, ``_start(obj)``, ``_stop(obj)`` - its states (the default: active/inactive);
    * ``_running_differences(obj, desired)`` - how what runs differs from the definition;
    * ``_summary(obj, predicted, desired)`` - the object in the result, under ``SUMMARY_KEY``.
    """

    SUMMARY_KEY = None
    FROM_XML = None  # f(name, text): the desired element from the user's XML
    FROM_SPEC = None  # a FromSpec(build, normalize): the desired element from a spec
    NEW_STATE = "inactive"  # the state of a newly defined object
    GENERATED = ("uuid",)
    STOP_ACTION = "stop"
    VALIDATE_FLAG = None  # the libvirt constant of the kind's define-with-schema-validation flag

    # ------------------------------------------------------------------ what a kind fills in
    def _validate(self):
        """Parse and check the user's ``xml``/``spec`` (``_from_xml``, ``_from_spec``); raise ValidationError."""
        p = self.params
        if p.get("xml") and p.get("spec") is not None:
            raise ValidationError("xml and spec are mutually exclusive")
        self._built = None
        if p.get("xml"):
            self._built = self._from_xml(p["xml"])
        elif p.get("spec") is not None:
            self._built = self._from_spec(p["spec"])

    def _from_xml(self, text):
        return self.FROM_XML(self.name, text)

    def _from_spec(self, spec):
        return self.FROM_SPEC.build(self.name, self.FROM_SPEC.normalize(spec, validated=True), normalized=True)

    def _desired(self, existing):
        """The desired XML element (None: only the state is managed)."""
        return self._built

    @abc.abstractmethod
    def _define_xml(self, text, flags=0):
        """Define ``text`` with libvirt (``flags``: its define flags, e.g. schema validation); the object."""

    def _check_desired(self, desired, existing):
        """Refuse (or prepare) before the definition changes."""

    def _keep_generated(self, desired, existing):
        return keep_generated(desired, existing, self.GENERATED)

    def _drift(self, desired, existing):
        return compare(desired, existing, texts=self.diff_mode)

    def _needs_redefine(self, drift):
        return drift.changed

    def _defined(self, obj, existing):
        """Just (re)defined."""

    def _live_change(self, obj, drift, redefined, before):
        """Changes to what runs that need no restart."""

    def _is_active(self, obj):
        return bool(obj.isActive())

    def _state_name(self, obj, active):
        return "active" if active else "inactive"

    def _runs(self, obj, before, predicted):
        """Whether the object runs before and after this run (so a pending restart can apply)."""
        return before["state"] == "active" and predicted["state"] == "active"

    def _prepare(self, obj, desired, before):
        """After the definition, before autostart and state (a pool's build)."""

    def _rollback(self, obj, err):
        """A step after this run's first definition failed: undo the definition where the kind can."""

    def _after(self, obj, predicted):
        """The last step before the summary (a pool's refresh)."""

    def _start(self, obj):
        obj.create()

    def _stop(self, obj):
        obj.destroy()

    def _undefine(self, obj):
        obj.undefine()

    def _restart(self, obj):
        with libvirt_errors("cannot restart {}".format(self.label)):
            self._stop(obj)
            self._start(obj)

    def _running_differences(self, obj, desired):
        """How what runs differs from the definition (paths; empty when it does not). In check mode a
        redefinition is predicted to differ; otherwise the kind compares its live XML
        (``_live_differences``)."""
        if self.check_mode and "redefine" in self.result["actions"]:
            return self.result.get("differences") or ["/" + self.KIND.root_tag]
        return self._live_differences(obj, desired)

    def _live_differences(self, obj, desired):
        """What of ``desired`` differs from what runs (the live XML), as drift paths. Optional: none by default;
        networks and pools compare their live XML here, domains in their own ``_running_differences``."""
        return []

    def _note_pending(self):
        """A pending restart was reported."""

    def _diff_extra(self):
        return ""

    @abc.abstractmethod
    def _summary(self, obj, predicted, desired):
        """The object's summary in the result (``domain``, ``network``, ...)."""

    def _finish(self, obj, predicted, desired):
        if not self.brief:
            self.result[self.SUMMARY_KEY] = None if predicted is None else self._summary(obj, predicted, desired)
        return self.result

    def _before_remove(self, obj, existing, before):
        """Refusals and preparations before the object is removed."""

    def _after_stop(self, obj, existing):
        """Between stopping the object and undefining it (a pool's delete)."""

    def _after_remove(self, obj, existing):
        """After the object was undefined (a domain's storage)."""

    def _removed_as(self):
        return "absent"

    # ------------------------------------------------------------------ the sequence
    def _observe(self, obj):
        """{state, active, persistent, autostart} of the object on the host (state absent when there is none)."""
        if obj is None:
            return {"state": "absent", "active": False, "persistent": False, "autostart": False}
        with libvirt_errors("cannot read {} {}".format(self.KIND.noun, self.name)):
            persistent = bool(obj.isPersistent())
            active = self._is_active(obj)
            return {
                "state": self._state_name(obj, active),
                "active": active,
                "persistent": persistent,
                "autostart": bool(obj.autostart()) if persistent else False,
            }

    def _run(self):
        obj = self.host.lookup(self.KIND, self.name)
        self.existed = obj is not None
        if self.params["state"] in self.REMOVE_STATES:
            return self._remove(obj)
        existing = self.host.read_xml(obj, self.KIND) if obj is not None else None
        desired = self._desired(existing)
        if existing is not None and holds_secrets(desired):
            # a console password or disk cookies: compared as libvirt holds them, read with the secure flag
            # (what is read is masked in the result, the diff and the logs: nolog.register_read_secrets)
            existing = self.host.read_xml(obj, self.KIND, secure=True)
        if obj is None and desired is None:
            raise VirtError(
                "{} {} is not defined on {}; give xml or spec to define it".format(
                    self.KIND.noun, self.name, self.conn.hostname
                )
            )
        before = self._observe(obj)
        drift = None
        defined_now = False
        if desired is not None:
            self._check_desired(desired, existing)
            drift = self._drift(compared_mark(desired, existing), existing)
            obj, defined_now = self._define(obj, existing, desired, drift, before)

        predicted = {"state": self.NEW_STATE if obj is None or not self.existed else before["state"]}
        predicted["autostart"] = before["autostart"]
        try:
            self._prepare(obj, desired, before)
            self._autostart(obj, predicted)
            self._state(obj, predicted)
        except VirtError as err:
            if defined_now:
                self._rollback(obj, err)
            raise
        if desired is not None and obj is not None and self._runs(obj, before, predicted):
            self._pending_restart(obj, compared_mark(desired, existing))
        self._after(obj, predicted)

        if self.diff_mode:
            text = to_text(existing) if existing is not None else ""
            self.result["diff"] = self._diff(
                diff_text(drift.before if drift else text, before["state"], before["autostart"]),
                diff_text(drift.after if drift else text, predicted["state"], predicted["autostart"])
                + self._diff_extra(),
                "desired",
            )
        return self._finish(obj, predicted, desired)

    def _define(self, obj, existing, desired, drift, before):
        """(Re)define the object when its definition differs (or it is transient); then its live changes.
        Returns (the object, whether this run made its first definition)."""
        if drift.changed:
            self.result["differences"] = drift.differences
        redefine = obj is None or self._needs_redefine(drift) or not before["persistent"]
        if redefine:
            self._act("redefine" if obj is not None and drift.changed else "define")
            if self.check_mode:
                self.host.planned(self.KIND, self.name)
            else:
                text = to_text(self._keep_generated(desired, existing))
                # what a failed check of the new definition restores (with its secrets); a transient object
                # has no definition to restore: it is undefined again
                previous = None
                if obj is not None and before["persistent"]:
                    previous = self.host.read_xml(obj, self.KIND, secure=True)
                try:
                    obj, validated = self._define_validated(text)
                except VirtError:
                    self._not_defined()  # a refused define changes nothing
                    raise
                self.host.put(self.KIND, self.name, obj)
                self._verify_kept(obj, desired, previous, validated)
                self._defined(obj, existing)
        self._live_change(obj, drift, redefine, before)
        return obj, redefine and existing is None and not self.check_mode

    def _define_validated(self, text):
        """Define ``text`` with libvirt's schema validation (``VALIDATE_FLAG``), so that an element or
        attribute this libvirt does not know is refused with libvirt's message naming it (a refused define
        changes nothing). Where the driver lacks the flag, define without it. Returns (object, validated)."""
        context = "cannot define {} {}".format(self.KIND.noun, self.name)
        flag = getattr(libvirt, self.VALIDATE_FLAG, None) if self.VALIDATE_FLAG and libvirt else None
        if flag:
            try:
                return self._define_xml(text, flag), True
            except libvirt.libvirtError as exc:
                if not _flag_unsupported(exc):
                    err = from_libvirt_error(exc, context)
                    if exc.get_error_code() == error_code("XML_INVALID_SCHEMA", 92):
                        err.msg += " (libvirt on {} does not know part of this XML; nothing was changed)".format(
                            self.conn.hostname
                        )
                        err.args = (err.msg,)
                    raise err from None
        with libvirt_errors(context):
            return self._define_xml(text, 0), False

    def _not_defined(self):
        """The definition was not changed after all: no define or redefine among the actions."""
        self.result["actions"] = [a for a in self.result["actions"] if a not in ("define", "redefine")]
        self.result["changed"] = bool(self.result["actions"])

    def _verify_kept(self, obj, desired, previous, validated):
        """Compare what libvirt kept with what was asked, right after the define: what it dropped (an
        element this libvirt does not know, where it could not validate) would otherwise be a change on
        every run. On a difference, the previous definition is restored (or the new one undefined) and the
        run fails naming what was not kept."""
        kept = self.host.read_xml(obj, self.KIND, secure=holds_secrets(desired))
        drift = self._drift(desired, kept)
        if not self._needs_redefine(drift):
            return
        paths = drift.differences
        if previous is not None:
            undo = "the previous definition was restored"
            try:
                with libvirt_errors("cannot restore the previous definition of {}".format(self.label)):
                    obj = self._define_xml(to_text(previous), 0)
            except VirtError as err:
                undo = err.msg
        else:
            undo = "the new definition was removed again"
            try:
                with libvirt_errors("cannot remove the new definition of {}".format(self.label)):
                    self._undefine(obj)
                self.host.drop(self.KIND, self.name)
            except VirtError as err:
                undo = err.msg
        if previous is not None:
            self.host.put(self.KIND, self.name, obj)
        self._not_defined()
        self.result["differences"] = paths
        raise VirtError(
            "libvirt on {} did not keep part of the definition of {}{}: {}; {}".format(
                self.conn.hostname,
                self.label,
                "" if validated else " (this libvirt cannot validate it against its schema)",
                ", ".join(paths[:10]) + (" ..." if len(paths) > 10 else ""),
                undo,
            )
        )

    def _state(self, obj, predicted):
        """``state: active`` starts, ``state: inactive`` stops (``present`` leaves it as it is)."""
        want = self.params["state"]
        if want == "active" and predicted["state"] != "active":
            self._act("start")
            predicted["state"] = "active"
            if not self.check_mode:
                with libvirt_errors("cannot start {}".format(self.label)):
                    self._start(obj)
        elif want == "inactive" and predicted["state"] == "active":
            self._act("stop")
            predicted["state"] = "inactive"
            if not self.check_mode:
                with libvirt_errors("cannot stop {}".format(self.label)):
                    self._stop(obj)

    def _pending_restart(self, obj, desired):
        """What runs differs from the definition (after the live changes): restart it with
        ``restart_on_change``, otherwise report ``pending_restart``."""
        differences = self._running_differences(obj, desired)
        if not differences:
            return
        self.result["pending_differences"] = differences
        if not self.params["restart_on_change"]:
            self.result["pending_restart"] = True
            self._note_pending()
            return
        self._act("restart")
        if not self.check_mode:
            self._restart(obj)

    def _remove(self, obj):
        """``state: absent`` (or the kind's other removal states): stop, undefine."""
        if obj is None:
            if self.diff_mode:
                self.result["diff"] = {"before": "", "after": ""}
            return self._finish(None, None, None)
        existing = self.host.read_xml(obj, self.KIND)
        before = self._observe(obj)
        if self.diff_mode:
            self.result["diff"] = self._diff(
                diff_text(to_text(existing), before["state"], before["autostart"]), "", self._removed_as()
            )
        self._before_remove(obj, existing, before)
        if before["active"]:
            self._act(self.STOP_ACTION)
            if not self.check_mode:
                with libvirt_errors("cannot stop {}".format(self.label)):
                    self._stop(obj)
        self._after_stop(obj, existing)
        if before["persistent"]:
            self._act("undefine")
            if not self.check_mode:
                with libvirt_errors("cannot undefine {}".format(self.label)):
                    self._undefine(obj)
        self._after_remove(obj, existing)
        if not self.check_mode:
            self.host.drop(self.KIND, self.name)
        return self._finish(None, None, None)
