# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's exception types, and the one place libvirtError is translated into them.

Every expected failure is raised as a :class:`VirtError` (or a subclass); a module's ``main()``
catches it once and reports it with ``fail_json(**err.to_fail_kwargs())``: no traceback.
"""

from __future__ import annotations

from contextlib import contextmanager

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt


class VirtError(Exception):
    """An expected failure, with libvirt's error code, domain and message when it came from libvirt.

    ``result`` carries partial results (checkpoints, leases, ``changed``) that the failing module
    still reports.
    """

    def __init__(self, msg, code=None, domain=None, libvirt_message=None, result=None):
        super().__init__(msg)
        self.msg = msg
        self.code = code
        self.domain = domain
        self.libvirt_message = libvirt_message
        self.result = dict(result or {})

    def to_fail_kwargs(self):
        out = dict(self.result)
        out["msg"] = self.msg
        if self.code is not None:
            out["libvirt_error"] = {
                "code": self.code,
                "domain": self.domain,
                "message": self.libvirt_message,
            }
        return out

    @property
    def is_busy(self):
        """True when libvirt refused because a lease (or QEMU's own image lock) is held elsewhere."""
        if self.code is not None and self.code == busy_error_code():
            return True
        text = self.libvirt_message or self.msg or ""
        return "resource busy" in text or 'Failed to get "write" lock' in text


class ValidationError(VirtError):
    """Bad input (options, XML, spec): reported before anything is changed."""


class DependencyError(VirtError):
    """An object was not tried because what it needs failed earlier in the same run."""


class LeaseError(VirtError):
    """A lease could not be taken, was not held when required, or the lock manager is off."""


def busy_error_code():
    return error_code("RESOURCE_BUSY", 87)


def error_code(name, default=None):
    """libvirt.VIR_ERR_<name>, tolerant of older bindings."""
    return getattr(libvirt, "VIR_ERR_" + name, default) if libvirt else default


def from_libvirt_error(exc, context=None):
    """Turn a libvirtError into a VirtError carrying code, domain and message."""
    code = exc.get_error_code()
    domain = exc.get_error_domain()
    message = exc.get_error_message() or str(exc)
    msg = message if not context else "{}: {}".format(context, message)
    return VirtError(msg, code=code, domain=domain, libvirt_message=message)


@contextmanager
def libvirt_errors(context=None):
    """Translate libvirtError raised inside the block into VirtError (exactly once)."""
    try:
        yield
    except VirtError:
        raise
    except Exception as exc:  # libvirt.libvirtError, but libvirt may be None at import time
        if libvirt is not None and isinstance(exc, libvirt.libvirtError):
            raise from_libvirt_error(exc, context) from None
        raise
