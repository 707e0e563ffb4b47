# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The optional imports (libvirt-python, lxml), once, with what failed when they are missing.

A leaf: it imports nothing from the collection, so any module may import from it. Modules report a
missing library with :func:`runner.check_libvirt`.
"""

from __future__ import annotations

import traceback

try:
    import libvirt

    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - exercised on hosts without the bindings
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

try:
    from lxml import etree

    HAS_LXML = True
    LXML_IMPORT_ERROR = None
except ImportError:  # pragma: no cover
    etree = None
    HAS_LXML = False
    LXML_IMPORT_ERROR = traceback.format_exc()

__all__ = ["HAS_LIBVIRT", "HAS_LXML", "LIBVIRT_IMPORT_ERROR", "LXML_IMPORT_ERROR", "etree", "libvirt"]
