# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt secrets as facts: found by UUID or usage, summarised without their values (which are never read
here)."""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError, VirtError, error_code
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import SECRET, lookup, read_xml, select
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements

# usage type -> the element of <usage> that names the secret
USAGE_ELEMENT = {"ceph": "name", "iscsi": "target", "volume": "volume", "tls": "name", "vtpm": "name"}
USAGE_TYPES = sorted(USAGE_ELEMENT)
SECRET_INFO_ARGUMENT_SPEC = {
    "uuid": {"type": "str"},
    "usage": {"type": "str", "choices": USAGE_TYPES},
    "usage_id": {"type": "str"},
}


def secret_summary(sec, root=None):
    """{uuid, usage, usage_id, description, private, ephemeral, has_value?} of a virSecret (never its value)."""
    root = root if root is not None else read_xml(sec, SECRET)
    desc = elements(root, "description")
    usage = elements(root, "usage")
    kind = usage[0].get("type") if usage else None
    ident = None
    if usage:
        named = elements(usage[0], USAGE_ELEMENT.get(kind, "name"))
        ident = (named[0].text or "").strip() if named else None
    return {
        "uuid": sec.UUIDString(),
        "usage": kind,
        "usage_id": ident,
        "description": (desc[0].text or "") if desc else None,
        "private": root.get("private") == "yes",
        "ephemeral": root.get("ephemeral") == "yes",
    }


def lookup_usage(conn, usage, usage_id):
    code = getattr(libvirt, "VIR_SECRET_USAGE_TYPE_" + usage.upper(), None)
    if code is None:
        raise VirtError("this libvirt-python has no secret usage type {}".format(usage))
    try:
        return conn.virt.secretLookupByUsage(code, usage_id)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == error_code(*SECRET.not_found):
            return None
        raise VirtError(
            "cannot look up the {} secret {}: {}".format(usage, usage_id, exc.get_error_message())
        ) from None


def find_secret(conn, uuid=None, usage=None, usage_id=None):
    """The virSecret with ``uuid``, or with ``usage``/``usage_id``; None when there is none."""
    if uuid:
        return lookup(conn, SECRET, uuid)
    return lookup_usage(conn, usage, usage_id)


def list_secrets(conn, uuid=None, usage=None, usage_id=None):
    """Summaries of the host's secrets, all or the one selected (never their values)."""
    if uuid or usage_id:
        if usage_id and not usage:
            raise ValidationError("usage_id needs usage")
        found = find_secret(conn, uuid, usage, usage_id)
        objs = [found] if found is not None else []
    else:
        objs = select(conn, SECRET, context="cannot list secrets")
    out = [secret_summary(s) for s in objs]
    if usage:
        out = [s for s in out if s["usage"] == usage]
    return sorted(out, key=lambda s: (s["usage"] or "", s["usage_id"] or "", s["uuid"]))
