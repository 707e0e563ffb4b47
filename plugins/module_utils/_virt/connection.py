# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One libvirt connection per module run, and the one place libvirtError is translated.

Usage in a module::

    module = AnsibleModule(argument_spec=merge_argument_spec(MY_SPEC), ...)
    check_libvirt(module)
    with Connection(module.params["uri"]) as conn:
        ...  # conn.virt is the libvirt.virConnect; conn.call(fn, *args) wraps libvirtError
"""

from __future__ import annotations

import os
import socket
import traceback
from contextlib import contextmanager
from urllib.parse import urlsplit

from ansible.module_utils.basic import env_fallback, missing_required_lib

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import VirtError

try:
    import libvirt

    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - exercised on hosts without the bindings
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

try:
    import lxml.etree  # noqa: F401  # pylint: disable=unused-import

    HAS_LXML = True
    LXML_IMPORT_ERROR = None
except ImportError:  # pragma: no cover
    HAS_LXML = False
    LXML_IMPORT_ERROR = traceback.format_exc()

DEFAULT_URI = "qemu:///system"

# Options every module that talks to libvirt accepts (documented in the lockstep.virt.connection fragment).
CONNECTION_ARGUMENT_SPEC = {
    "uri": {"type": "str", "fallback": (env_fallback, ["LIBVIRT_DEFAULT_URI"])},
}


def connection_argument_spec():
    return dict((k, dict(v)) for k, v in CONNECTION_ARGUMENT_SPEC.items())


def merge_argument_spec(spec):
    """Return ``spec`` plus the shared connection options."""
    out = connection_argument_spec()
    out.update(spec)
    return out


def check_libvirt(module):
    """Fail the module the Ansible way when libvirt-python or lxml is missing on the managed host."""
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)
    if not HAS_LXML:
        module.fail_json(msg=missing_required_lib("lxml"), exception=LXML_IMPORT_ERROR)


def busy_error_code():
    return getattr(libvirt, "VIR_ERR_RESOURCE_BUSY", 87) if libvirt else 87


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


def _silence_libvirt_stderr():
    # libvirt prints every error on stderr by default; errors are reported through VirtError instead.
    if libvirt is not None:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def resolve_uri(uri=None):
    return uri or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def uri_is_local(uri):
    """True when the URI names this machine's daemon (no host part), so local files can be probed."""
    parts = urlsplit(uri)
    if "+" in parts.scheme and parts.scheme.split("+", 1)[1] not in ("unix",):
        return False
    return not parts.hostname or parts.hostname in ("localhost",)


class Connection:
    """A libvirt connection opened once per module run.

    ``virt``: the libvirt.virConnect; ``uri``; ``driver``: libvirt's driver type (``QEMU``, ``Xen``,
    ``LXC``, ``TEST``); ``local``: whether local files (lock config, lease files) belong to that host;
    ``hostname``: the hypervisor's host name; ``profile``: its DriverProfile.
    """

    def __init__(self, uri=None, readonly=False):
        if not HAS_LIBVIRT:
            raise VirtError(missing_required_lib("libvirt-python"))
        self.uri = resolve_uri(uri)
        self.readonly = readonly
        self.virt = None
        self._hostname = None
        self._profile = None
        self.open()

    def open(self):
        _silence_libvirt_stderr()
        with libvirt_errors("cannot connect to {}".format(self.uri)):
            if self.readonly:
                self.virt = libvirt.openReadOnly(self.uri)
            else:
                self.virt = libvirt.open(self.uri)
        if self.virt is None:  # pragma: no cover - old bindings returned None
            raise VirtError("cannot connect to {}".format(self.uri))
        return self

    def close(self):
        if self.virt is not None:
            try:
                self.virt.close()
            except Exception:  # pragma: no cover - closing is best effort
                pass
            self.virt = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def call(self, fn, *args, **kwargs):
        """Call a libvirt function, translating libvirtError."""
        context = kwargs.pop("context", None)
        with libvirt_errors(context):
            return fn(*args, **kwargs)

    @property
    def driver(self):
        with libvirt_errors():
            return self.virt.getType()

    @property
    def local(self):
        return uri_is_local(self.uri)

    @property
    def hostname(self):
        if self._hostname is None:
            try:
                self._hostname = self.virt.getHostname()
            except Exception:
                self._hostname = socket.gethostname()
        return self._hostname

    @property
    def profile(self):
        if self._profile is None:
            from ansible_collections.lockstep.virt.plugins.module_utils._virt.profiles import profile_for_connection

            self._profile = profile_for_connection(self)
        return self._profile

    # lookups ---------------------------------------------------------------
    def lookup_domain(self, name):
        """The domain called ``name``, or None when there is none."""
        from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup

        return lookup(self, DOMAIN, name)

    def list_domains(self):
        with libvirt_errors("cannot list domains"):
            return list(self.virt.listAllDomains(0))


def run_module(module, fn):
    """Run ``fn()`` (which returns the result dict) and report it: exit_json, or fail_json on VirtError."""
    try:
        result = fn()
    except VirtError as err:
        module.fail_json(**err.to_fail_kwargs())
    module.exit_json(**result)
