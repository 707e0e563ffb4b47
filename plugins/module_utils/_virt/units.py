# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Human sizes ("10G", "512 MiB", "1.5GiB", 1048576) to bytes, and back to a short text.

Units follow libvirt's: ``K``/``KiB``/``M``/``G``/``T``/``P`` are powers of 1024, ``KB``/``MB``/``GB``...
powers of 1000, no unit (or ``B``) means bytes. The factors come from :func:`xml.to_bytes`.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import to_bytes

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value, what="size"):
    """Bytes in ``value``: an int (bytes) or a string such as ``10G``, ``512MiB``, ``1.5 GiB``, ``4096``."""
    if isinstance(value, bool) or value is None:
        raise ValidationError("{} must be a size such as 10G or 512MiB, got {!r}".format(what, value))
    if isinstance(value, int):
        number, unit = Decimal(value), "b"
    else:
        m = _SIZE_RE.match(str(value))
        if not m:
            raise ValidationError("{} must be a size such as 10G or 512MiB, got {!r}".format(what, value))
        try:
            number = Decimal(m.group(1))
        except InvalidOperation:  # pragma: no cover - the regex admits only numbers
            raise ValidationError("{} is not a number: {!r}".format(what, value)) from None
        unit = m.group(2) or "b"
    try:
        factor = to_bytes(1, unit)
    except ValidationError:
        raise ValidationError(
            "{} has an unknown unit {!r} (use K, M, G, T, KiB, MiB, GB, ...)".format(what, unit)
        ) from None
    size = number * factor
    if size != size.to_integral_value():
        raise ValidationError("{} is not a whole number of bytes: {!r}".format(what, value))
    if size < 0:
        raise ValidationError("{} must not be negative".format(what))
    return int(size)


def human_size(nbytes):
    """``1073741824`` -> ``1 GiB``; sizes that are not whole units keep a decimal."""
    if nbytes is None:
        return None
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return ("{0:.0f} {1}" if value == int(value) else "{0:.2f} {1}").format(value, unit)
        value /= 1024.0
    return "{} B".format(nbytes)  # pragma: no cover
