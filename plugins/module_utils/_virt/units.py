# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sizes: the one table of size units, the one parser of sizes, and sizes back to a short text.

Units follow libvirt's own convention (virScaleInteger), case-insensitive: ``b``/``bytes`` are bytes;
``K``/``KiB``, ``M``/``MiB``, ``G``/``GiB``, ``T``/``TiB``, ``P``/``PiB``, ``E``/``EiB`` are powers of 1024;
``KB``, ``MB``, ``GB``, ``TB``, ``PB``, ``EB`` powers of 1000. Documented for users in the
``lockstep.virt.sizes`` doc fragment.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError

UNITS = {"b": 1, "bytes": 1}
for _power, _letter in enumerate("kmgtpe", start=1):
    UNITS[_letter] = UNITS[_letter + "ib"] = 1024**_power
    UNITS[_letter + "b"] = 1000**_power
del _power, _letter

MIB = 1024**2

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_HINT = "a size such as 10G, 512MiB or 2GB (K, M, G, T, KiB, MiB, ... are powers of 1024; KB, MB, GB, ... of 1000)"


def unit_factor(unit):
    """Bytes in one ``unit`` (libvirt's unit names, case-insensitive); ValidationError when unknown."""
    factor = UNITS.get(str(unit).strip().lower())
    if factor is None:
        raise ValidationError("unknown size unit {!r}".format(unit))
    return factor


def to_bytes(value, unit="KiB"):
    """Bytes in the whole number ``value`` of ``unit``, as libvirt's XML writes sizes (``unit`` None: KiB)."""
    return int(value) * unit_factor(unit or "KiB")


def parse_size(value, what="size", default_unit="b"):
    """Bytes in ``value``: a number of ``default_unit`` (an int, or a string without a unit) or a string
    such as ``10G``, ``512MiB``, ``1.5 GiB``, ``2GB``. Raises ValidationError naming ``what``."""
    if isinstance(value, bool) or value is None:
        raise ValidationError("{} must be {}, got {!r}".format(what, _HINT, value))
    if isinstance(value, int):
        number, unit = Decimal(value), default_unit
    elif isinstance(value, float) and value.is_integer():
        number, unit = Decimal(int(value)), default_unit
    else:
        m = _SIZE_RE.match(str(value))
        if not m:
            raise ValidationError("{} must be {}, got {!r}".format(what, _HINT, value))
        try:
            number = Decimal(m.group(1))
        except InvalidOperation:  # pragma: no cover - the regex admits only numbers
            raise ValidationError("{} is not a number: {!r}".format(what, value)) from None
        unit = m.group(2) or default_unit
    try:
        factor = unit_factor(unit)
    except ValidationError:
        raise ValidationError("{} has an unknown unit {!r}: it must be {}".format(what, unit, _HINT)) from None
    size = number * factor
    if size != size.to_integral_value():
        raise ValidationError("{} is not a whole number of bytes: {!r}".format(what, value))
    if size < 0:
        raise ValidationError("{} must not be negative".format(what))
    return int(size)


def parse_mib(value, what="size"):
    """Whole MiB in ``value`` (a number is MiB; a string may carry any unit). A size that is not a whole
    number of MiB (``1000KiB``, ``2GB``) is refused rather than rounded."""
    nbytes = parse_size(value, what, default_unit="MiB")
    if nbytes % MIB:
        raise ValidationError(
            "{} {!r} is {} bytes, not a whole number of MiB (1 MiB = 1048576 bytes; GB is 10^9 bytes, "
            "GiB 2^30): use MiB or binary units such as 2GiB".format(what, value, nbytes)
        )
    return nbytes // MIB


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
