# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the domain, network and pool spec builders share: spec validation and element building."""

from __future__ import annotations

import copy

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import etree
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError


def validate_name(name, noun):
    """Refuse a name libvirt cannot take for a ``noun`` (domain, network, storage pool): empty, with a
    NUL or with a path separator."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("name must be a non-empty {} name".format(noun))
    if "\0" in name:
        raise ValidationError("name must not contain a NUL character")
    if "/" in name:
        raise ValidationError("name {!r} contains a path separator ('/'), which a {} name cannot".format(name, noun))
    return name


def validate_spec(options, spec, what="spec", validated=False):
    """Validate a ``spec`` dict against an argument-spec ``options`` dict (unknown keys, types, choices).

    Returns a copy with defaults filled in; raises ValidationError naming every unknown key by its path
    (``spec.disks.speed``) and passing ansible-core's other messages through as they are.
    ``validated``: ``spec`` is a module option AnsibleModule already validated against these ``options``;
    it is copied, not validated again.
    """
    if validated:
        return copy.deepcopy(spec)
    if not isinstance(spec, dict):
        raise ValidationError("{} must be a dictionary".format(what))
    unknown = unknown_keys(options, spec, what)
    if unknown:
        raise ValidationError("invalid {}: unsupported keys {}".format(what, ", ".join(unknown)))
    result = ArgumentSpecValidator({what: {"type": "dict", "options": options}}).validate({what: spec})
    if result.error_messages:
        raise ValidationError("invalid {}: {}".format(what, "; ".join(result.error_messages)))
    return result.validated_parameters[what]


def unknown_keys(options, value, path):
    """Paths of the keys in ``value`` (and the dicts and lists of dicts nested in it) that ``options`` does
    not name, in order, each once."""
    found = []
    known = set(options)
    for opt in options.values():
        known.update(opt.get("aliases") or ())
    found.extend("{}.{}".format(path, key) for key in value if key not in known)
    for key, opt in options.items():
        if not opt.get("options"):
            continue
        names = [key] + list(opt.get("aliases") or ())
        for item in [value[n] for n in names if n in value]:
            items = item if isinstance(item, list) else [item]
            for one in items:
                if isinstance(one, dict):
                    found.extend(unknown_keys(opt["options"], one, "{}.{}".format(path, key)))
    return list(dict.fromkeys(found))


def sub(parent, tag, text=None, **attrs):
    """Append a child element with attributes (``None`` values skipped, a trailing ``_`` stripped)."""
    el = etree.SubElement(parent, tag)
    for k, v in attrs.items():
        if v is not None:
            el.set(k.rstrip("_"), str(v))
    if text is not None:
        el.text = str(text)
    return el
