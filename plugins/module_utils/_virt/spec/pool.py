# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Structured ``spec`` -> libvirt storage pool XML, and the argument spec of that ``spec``."""

from __future__ import annotations

import os
import re

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.common import sub, validate_spec
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import etree

POOL_TYPES = ["dir", "fs", "netfs", "logical", "iscsi", "rbd"]
# Types whose storage libvirt builds (mkdir, mkfs, vgcreate) and whose target is a directory.
DIRECTORY_TARGET_TYPES = ("dir", "fs", "netfs")

PERMISSIONS_OPTIONS = {
    "mode": {"type": "str"},
    "owner": {"type": "int"},
    "group": {"type": "int"},
    "label": {"type": "str"},
}

AUTH_OPTIONS = {
    "type": {"type": "str", "choices": ["ceph", "chap"], "required": True},
    "username": {"type": "str", "required": True},
    "secret_uuid": {"type": "str", "no_log": False},
    "secret_usage": {"type": "str", "no_log": False},
}

SOURCE_OPTIONS = {
    "hosts": {"type": "list", "elements": "str", "default": []},
    "dir": {"type": "str"},
    "devices": {"type": "list", "elements": "str", "default": []},
    "name": {"type": "str"},
    "format": {"type": "str"},
    "initiator": {"type": "str"},
    "auth": {"type": "dict", "options": AUTH_OPTIONS, "no_log": False},
}

POOL_SPEC_OPTIONS = {
    "type": {"type": "str", "choices": POOL_TYPES, "default": "dir"},
    "path": {"type": "str"},
    "permissions": {"type": "dict", "options": PERMISSIONS_OPTIONS},
    "source": {"type": "dict", "options": SOURCE_OPTIONS},
}

_MODE_RE = re.compile(r"^0?[0-7]{3,4}$")
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9._-]+)(:(\d{1,5}))?$")


def _host(text, where):
    m = _HOST_RE.match(text or "")
    if not m:
        raise ValidationError("{} is not a host or host:port: {!r}".format(where, text))
    return m.group(1).strip("[]"), m.group(3)


def normalize_pool_spec(spec, validated=False):
    """Validate ``spec`` against POOL_SPEC_OPTIONS, fill defaults and check what each type needs.
    ``validated``: ``spec`` is the module's option, which AnsibleModule validated already."""
    s = validate_spec(POOL_SPEC_OPTIONS, spec, validated=validated)
    kind = s["type"]
    src = s.get("source") or {"hosts": [], "devices": []}
    s["source"] = src
    if s.get("path") is not None:
        if not s["path"].startswith("/") or "\0" in s["path"]:
            raise ValidationError("spec.path must be an absolute path, got {!r}".format(s["path"]))
        s["path"] = os.path.normpath(s["path"])
        if s["path"] == "/":
            raise ValidationError("spec.path must not be /")
    perms = s.get("permissions")
    if perms and perms.get("mode") is not None:
        if not _MODE_RE.match(perms["mode"]):
            raise ValidationError("spec.permissions.mode must be octal such as '0755', got {!r}".format(perms["mode"]))
        perms["mode"] = "{:04o}".format(int(perms["mode"], 8))
    hosts = [_host(h, "spec.source.hosts[{}]".format(i)) for i, h in enumerate(src["hosts"])]
    src["hosts_parsed"] = hosts
    need = {
        "dir": ("path",),
        "fs": ("path", "devices"),
        "netfs": ("path", "hosts", "dir"),
        "logical": (),
        "iscsi": ("hosts", "devices"),
        "rbd": ("hosts", "name"),
    }[kind]
    for key in need:
        value = s.get("path") if key == "path" else src.get(key)
        if not value:
            where = "spec.path" if key == "path" else "spec.source.{}".format(key)
            raise ValidationError("{} is required for a {} pool".format(where, kind))
    if kind == "logical" and not (src.get("name") or src["devices"]):
        raise ValidationError("a logical pool needs spec.source.name (the volume group) or spec.source.devices")
    if kind in ("fs", "iscsi") and len(src["devices"]) != 1:
        raise ValidationError("a {} pool takes exactly one spec.source.devices entry".format(kind))
    if kind in ("netfs", "iscsi") and len(hosts) != 1:
        raise ValidationError("a {} pool takes exactly one spec.source.hosts entry".format(kind))
    if kind == "rbd" and s.get("path"):
        raise ValidationError("an rbd pool has no spec.path")
    if kind == "logical" and not s.get("path"):
        s["path"] = "/dev/" + (src.get("name") or "")
    if src.get("auth") and kind not in ("rbd", "iscsi"):
        raise ValidationError("spec.source.auth is for rbd and iscsi pools")
    auth = src.get("auth")
    if auth:
        if bool(auth.get("secret_uuid")) == bool(auth.get("secret_usage")):
            raise ValidationError("spec.source.auth needs exactly one of secret_uuid or secret_usage")
        if (auth["type"] == "ceph") != (kind == "rbd"):
            raise ValidationError("spec.source.auth.type is ceph for rbd pools and chap for iscsi pools")
    return s


def build_pool_xml(name, spec, normalized=False):
    """Storage pool XML (an lxml element) for ``spec``."""
    s = spec if normalized else normalize_pool_spec(spec)
    kind = s["type"]
    src = s["source"]
    root = etree.Element("pool")
    root.set("type", kind)
    sub(root, "name", name)
    source = etree.Element("source")
    for host, port in src["hosts_parsed"]:
        sub(source, "host", name=host, port=port)
    for dev in src["devices"]:
        sub(source, "device", path=dev)
    if src.get("dir"):
        sub(source, "dir", path=src["dir"])
    if src.get("name"):
        sub(source, "name", src["name"])
    if src.get("format"):
        sub(source, "format", type_=src["format"])
    if src.get("initiator"):
        init = sub(source, "initiator")
        sub(init, "iqn", name=src["initiator"])
    if src.get("auth"):
        a = src["auth"]
        auth = sub(source, "auth", type_=a["type"], username=a["username"])
        sub(auth, "secret", uuid=a.get("secret_uuid"), usage=a.get("secret_usage"))
    if len(source):
        root.append(source)
    if s.get("path") and kind != "rbd":
        target = sub(root, "target")
        sub(target, "path", s["path"])
        perms = s.get("permissions")
        if perms and any(perms.get(k) is not None for k in PERMISSIONS_OPTIONS):
            p = sub(target, "permissions")
            for key in ("mode", "owner", "group", "label"):
                if perms.get(key) is not None:
                    sub(p, key, perms[key])
    return root
