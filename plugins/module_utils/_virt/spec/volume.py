# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Storage volume options, name validation and volume XML."""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.common import sub
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import etree

VOLUME_FORMATS = ["qcow2", "raw"]
MAX_NAME = 255


def validate_volume_name(name, what="name"):
    """Refuse names that could leave the pool: a path separator, ``..``, a NUL, or nothing at all."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("{} must be a non-empty volume name".format(what))
    if "\0" in name:
        raise ValidationError("{} must not contain a NUL character".format(what))
    if "/" in name or "\\" in name:
        raise ValidationError(
            "{} {!r} contains a path separator; a volume name is a plain file name".format(what, name)
        )
    if ".." in name or name == ".":
        raise ValidationError("{} {!r} contains '..' or is '.'; a volume name is a plain file name".format(what, name))
    if len(name) > MAX_NAME:
        raise ValidationError("{} is longer than {} characters".format(what, MAX_NAME))
    return name


def build_volume_xml(name, capacity, allocation=None, fmt=None, backing=None):
    """Volume XML: ``backing`` is ``(path, format)`` of a backing volume (a copy-on-write overlay)."""
    root = etree.Element("volume")
    sub(root, "name", name)
    sub(root, "capacity", capacity, unit="bytes")
    if allocation is not None:
        sub(root, "allocation", allocation, unit="bytes")
    if fmt:
        target = sub(root, "target")
        sub(target, "format", type_=fmt)
    if backing:
        store = sub(root, "backingStore")
        sub(store, "path", backing[0])
        if backing[1]:
            sub(store, "format", type_=backing[1])
    return root
