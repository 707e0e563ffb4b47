# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt secret objects: define, set the value, compare it, list them.

The value is compared with libvirt's on the host and never read into a result:

* a secret that is not private: ``virSecretGetValue`` (libvirt returns it to a read-write client);
* a private secret: libvirt refuses ``virSecretGetValue`` ("secret is private"), so on the host
  itself (a local URI, run as root) the comparison reads the value libvirt stored for a persistent
  secret, ``/etc/libvirt/secrets/<uuid>.base64``;
* otherwise (a private ephemeral secret, or a remote URI) the value cannot be compared: the module
  says so and ``update_value`` decides (``on_create``: leave it; ``always``: set it, reported as a change).

Values are compared with :func:`hmac.compare_digest`; neither the value nor anything derived from
it is put into a result, a diff or a message.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    ValidationError,
    VirtError,
    error_code,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.base import Manager
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import SECRET, read_xml
from ansible_collections.lockstep.virt.plugins.module_utils._virt.reporters.secret_info import (
    USAGE_ELEMENT,
    USAGE_TYPES,
    find_secret,
    lookup_usage,
    secret_summary,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.common import sub
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, etree, local, to_text

UPDATE_VALUE = ["when_different", "on_create", "always"]

SECRET_ARGUMENT_SPEC = {
    "uuid": {"type": "str"},
    "usage": {"type": "str", "choices": USAGE_TYPES},
    "usage_id": {"type": "str"},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "description": {"type": "str"},
    "private": {"type": "bool", "default": True},
    "ephemeral": {"type": "bool", "default": False},
    "value": {"type": "str", "no_log": True},
    "value_encoding": {"type": "str", "choices": ["raw", "base64"], "default": "raw"},
    "update_value": {"type": "str", "choices": UPDATE_VALUE, "default": "when_different"},
}
# Where libvirt's secret driver keeps the values of persistent secrets (privileged daemon).
SECRETS_DIR = "/etc/libvirt/secrets"
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def build_secret_xml(params, uuid=None):
    """The <secret> element the module parameters describe."""
    root = etree.Element("secret")
    root.set("ephemeral", "yes" if params["ephemeral"] else "no")
    root.set("private", "yes" if params["private"] else "no")
    uuid = uuid or params.get("uuid")
    if uuid:
        sub(root, "uuid", uuid)
    if params.get("description") is not None:
        sub(root, "description", params["description"])
    if params.get("usage"):
        usage = sub(root, "usage", type_=params["usage"])
        sub(usage, USAGE_ELEMENT[params["usage"]], params["usage_id"])
    return root


def _decode_value(params):
    text = params["value"]
    if params["value_encoding"] == "raw":
        return text.encode("utf-8")
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("value is not valid base64 (value_encoding: base64)") from None


class SecretManager(Manager):
    """Bring one libvirt secret to the module parameters. Its "name" is its usage id or UUID."""

    KIND = SECRET
    RESULT = {"value_changed": False, "value_compared": None}

    def _validate_name(self):
        """A secret has no name: it is named by its UUID or its usage id (a volume usage id is a path),
        both checked when its definition is built."""

    def __init__(self, conn, params, check_mode=False, diff_mode=False):
        super().__init__(conn, dict(params, name=params.get("usage_id") or params.get("uuid")), check_mode, diff_mode)

    def _check(self):
        p = self.params
        if p.get("uuid") and not _UUID_RE.match(p["uuid"]):
            raise ValidationError("uuid is not a UUID: {!r}".format(p["uuid"]))
        if bool(p.get("usage")) != bool(p.get("usage_id")):
            raise ValidationError("usage and usage_id go together")
        if not p.get("uuid") and not p.get("usage"):
            raise ValidationError("a secret is named by uuid, or by usage and usage_id")
        if p.get("usage") == "volume" and not (p["usage_id"] or "").startswith("/"):
            raise ValidationError("the usage_id of a volume secret is the volume's absolute path")
        if p["state"] == "absent":
            return None
        return _decode_value(p) if p.get("value") is not None else None

    def _run(self):
        p = self.params
        value = self._check()
        sec = find_secret(self.conn, p.get("uuid"), p.get("usage"), p.get("usage_id"))
        if sec is not None and p.get("uuid") and p.get("usage"):
            other = lookup_usage(self.conn, p["usage"], p["usage_id"])
            if other is not None and other.UUIDString() != sec.UUIDString():
                raise ValidationError(
                    "the {} secret {} is secret {}, not {}".format(
                        p["usage"], p["usage_id"], other.UUIDString(), p["uuid"]
                    )
                )
        existing = read_xml(sec, SECRET) if sec is not None else None
        before = to_text(existing) if existing is not None else ""
        if p["state"] == "absent":
            if sec is not None:
                self._act("undefine")
                if not self.check_mode:
                    with libvirt_errors("cannot undefine secret {}".format(self.name)):
                        sec.undefine()
            self.result["secret"] = None
            self.result["diff"] = self._diff(before, "", "absent")
            return self.result

        if sec is None and not p.get("usage"):
            raise ValidationError("secret {} does not exist; give usage and usage_id to define it".format(p["uuid"]))
        desired = build_secret_xml(p, uuid=sec.UUIDString() if sec is not None else None)
        if existing is not None and p.get("usage") is None:  # named by uuid only: keep its usage
            for u in elements(existing, "usage"):
                desired.append(etree.fromstring(etree.tostring(u)))
        if existing is not None and p.get("description") is None:
            for d in elements(existing, "description"):
                desired.insert(1, etree.fromstring(etree.tostring(d)))
        differences = self._differences(desired, existing)
        if differences:
            self.result["differences"] = differences
            self._act("define" if sec is None else "redefine")
            if not self.check_mode:
                with libvirt_errors("cannot define secret {}".format(self.name)):
                    sec = self.conn.virt.secretDefineXML(to_text(desired))
        if value is not None:
            self._value(sec, value, created=existing is None)
        self.result["secret"] = (
            secret_summary(sec)
            if sec is not None
            else dict(
                uuid=p.get("uuid"),
                usage=p["usage"],
                usage_id=p["usage_id"],
                description=p.get("description"),
                private=p["private"],
                ephemeral=p["ephemeral"],
            )
        )
        self.result["diff"] = self._diff(before, to_text(desired), "desired")
        return self.result

    @staticmethod
    def _differences(desired, existing):
        """Where ``existing`` differs from ``desired``: its flags, description (when given) and usage."""
        if existing is None:
            return ["/secret"]
        out = ["/secret/@" + a for a in ("ephemeral", "private") if (existing.get(a) or "no") != desired.get(a)]

        def text(root):
            found = elements(root, "description")
            return (found[0].text or "") if found else None

        def usage(root):
            found = elements(root, "usage")
            if not found:
                return None
            return found[0].get("type"), [(local(c.tag), (c.text or "").strip()) for c in elements(found[0])]

        if text(desired) is not None and text(desired) != text(existing):
            out.append("/secret/description")
        if usage(desired) != usage(existing):
            out.append("/secret/usage")
        return out

    def _current_value(self, sec):
        """libvirt's value of ``sec`` (bytes), b"" when it has none, None when it cannot be read."""
        try:
            return sec.value(0)
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            if code == error_code("NO_SECRET"):  # "does not have a value"
                return b""
            if code not in (error_code("INVALID_SECRET"), error_code("OPERATION_DENIED")):
                raise VirtError(
                    "cannot read the value of secret {}: {}".format(self.name, exc.get_error_message())
                ) from None
        # private: the value libvirt stored on this host, for a persistent secret
        if not self.conn.local:
            return None
        path = os.path.join(SECRETS_DIR, sec.UUIDString() + ".base64")
        try:
            with open(path, "rb") as fh:
                return base64.b64decode(fh.read().strip())
        except FileNotFoundError:
            xml_file = os.path.join(SECRETS_DIR, sec.UUIDString() + ".xml")
            return b"" if os.path.exists(xml_file) else None  # persistent without a value; else ephemeral
        except (OSError, binascii.Error, ValueError):
            return None

    def _value(self, sec, value, created):
        mode = self.params["update_value"]
        if created or sec is None:
            self.result["value_compared"] = False
            differs = True
        elif mode == "always":
            self.result["value_compared"] = False
            differs = True
        else:
            current = self._current_value(sec)
            self.result["value_compared"] = current is not None
            if current is None:
                if mode == "when_different":
                    raise VirtError(
                        "the value of secret {} cannot be compared with libvirt's here (it is private and {}); "
                        "use update_value: on_create to leave it, or always to set it on every run".format(
                            self.name, "ephemeral" if self.conn.local else "the URI is remote"
                        )
                    )
                differs = False
            else:
                differs = not hmac.compare_digest(current, value)
        if not differs:
            return
        self._act("set_value")
        self.result["value_changed"] = True
        if not self.check_mode:
            with libvirt_errors("cannot set the value of secret {}".format(self.name)):
                sec.setValue(value, 0)


__all__ = ["SECRET_ARGUMENT_SPEC", "SecretManager", "build_secret_xml"]
