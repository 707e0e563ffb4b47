# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One libvirt connection per module run: open, close, driver, host name and driver profile.

Usage::

    with Connection(module.params["uri"]) as conn:
        ...  # conn.virt is the libvirt.virConnect
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from ansible.module_utils.basic import env_fallback, missing_required_lib

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import HAS_LIBVIRT, libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import VirtError, libvirt_errors
from ansible_collections.lockstep.virt.plugins.module_utils._virt.profiles import profile_for_connection

DEFAULT_URI = "qemu:///system"


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
            except Exception:  # libvirtError: the driver has no hostname call
                # the host is the URI's; only a local URI's host is this machine
                remote = urlsplit(self.uri or "").hostname
                self._hostname = socket.gethostname() if self.local or not remote else remote
        return self._hostname

    @property
    def profile(self):
        if self._profile is None:
            self._profile = profile_for_connection(self)
        return self._profile


# Options every module that talks to libvirt accepts (documented in the lockstep.virt.connection fragment).
CONNECTION_ARGUMENT_SPEC = {
    "uri": {"type": "str", "fallback": (env_fallback, ["LIBVIRT_DEFAULT_URI"])},
}


def merge_argument_spec(spec):
    """Return ``spec`` plus the shared connection options."""
    out = dict((k, dict(v)) for k, v in CONNECTION_ARGUMENT_SPEC.items())
    out.update(spec)
    return out
