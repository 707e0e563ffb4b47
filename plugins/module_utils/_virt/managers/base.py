# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every object manager shares: its parameters and result, the actions it records, the partial
result a failure carries, autostart, the diff it reports, and the parsing of the user's XML."""

from __future__ import annotations

import copy

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    ValidationError,
    VirtError,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.common import validate_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, etree, parse_xml


def diff_text(xml_text, state, autostart):
    """One side of a diff: the object's state and autostart, then its XML."""
    return "state: {}\nautostart: {}\n{}".format(state, "yes" if autostart else "no", xml_text or "")


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


class Manager:
    """Bring one object of ``KIND`` (an objects.Kind) to the state the module parameters describe.

    A subclass writes ``_run()``; :meth:`run` returns its result or raises VirtError carrying the
    partial result (``changed``, ``actions``: see :meth:`_fail`).
    """

    KIND = None
    RESULT = {}  # what the result holds besides changed and actions, as it starts

    def __init__(self, conn, params, check_mode=False, diff_mode=False):
        self.conn = conn
        self.params = params
        self.check_mode = check_mode
        self.diff_mode = diff_mode
        self.name = params["name"]
        self.label = self.KIND.label.format(self.name)  # how messages and diff headers name the object
        self.result = {"changed": False, "actions": []}
        self.result.update(copy.deepcopy(self.RESULT))

    def _act(self, action):
        self.result["changed"] = True
        self.result["actions"].append(action)

    def run(self):
        try:
            self._validate_name()  # before anything is looked up or changed
            return self._run()
        except VirtError as err:
            self._fail(err)
            raise

    def _validate_name(self):
        validate_name(self.name, self.KIND.noun)

    def _run(self):  # pragma: no cover - every manager has its own
        raise NotImplementedError

    def _fail(self, err):
        """Attach the partial result to ``err`` and return it."""
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

    def _restart_if_pending(self, pending, restart):
        """A running object whose definition differs from what runs: restart it (``restart()``) with
        ``restart_on_change``, otherwise report ``pending_restart``."""
        if not pending:
            return
        if not self.params["restart_on_change"]:
            self.result["pending_restart"] = True
            return
        self._act("restart")
        if self.check_mode:
            return
        with libvirt_errors("cannot restart {}".format(self.label)):
            restart()
