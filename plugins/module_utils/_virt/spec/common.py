# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the domain, network and pool spec builders share: spec validation and element building."""

from __future__ import annotations

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

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


def validate_spec(options, spec, what="spec"):
    """Validate a ``spec`` dict against an argument-spec ``options`` dict (unknown keys, types, choices).

    Returns the validated dict with defaults filled in; raises ValidationError with every problem.
    """
    if not isinstance(spec, dict):
        raise ValidationError("{} must be a dictionary".format(what))
    validator = ArgumentSpecValidator({what: {"type": "dict", "options": options}})
    result = validator.validate({what: spec})
    if result.errors.errors:
        msgs = []
        for err in result.errors.errors:
            m = str(getattr(err, "msg", err))
            if type(err).__name__ == "UnsupportedError":
                m = "unsupported keys " + m.split(". Supported parameters include", 1)[0]
            msgs.append(m)
        raise ValidationError("invalid {}: {}".format(what, "; ".join(msgs)))
    return result.validated_parameters[what]


def sub(parent, tag, text=None, **attrs):
    """Append a child element with attributes (``None`` values skipped, a trailing ``_`` stripped)."""
    from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import etree

    el = etree.SubElement(parent, tag)
    for k, v in attrs.items():
        if v is not None:
            el.set(k.rstrip("_"), str(v))
    if text is not None:
        el.text = str(text)
    return el
