"""The connection wrapper and URI helpers."""

import socket

import libvirt
import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.connection import (
    Connection,
    merge_argument_spec,
    resolve_uri,
    uri_is_local,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import VirtError, libvirt_errors
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup, select
from ansible_collections.lockstep.virt.plugins.module_utils._virt.profiles import (
    TEST,
)


def test_connection_opens_test_driver():
    with Connection("test:///default") as conn:
        assert conn.driver == "TEST" and conn.profile is TEST and conn.local
        assert lookup(conn, DOMAIN, "test").name() == "test"
        assert lookup(conn, DOMAIN, "missing") is None
        assert "test" in [d.name() for d in select(conn, DOMAIN)]
        assert conn.hostname
    assert conn.virt is None


def test_unreachable_uri_is_one_clean_error():
    with pytest.raises(VirtError) as exc:
        Connection("qemu+tcp://127.0.0.1:1/system")  # a closed loopback port: no ssh, no DNS
    err = exc.value
    assert err.msg.startswith("cannot connect to qemu+tcp://127.0.0.1:1/system: ")
    assert err.code == libvirt.VIR_ERR_SYSTEM_ERROR and err.domain == libvirt.VIR_FROM_RPC
    kwargs = err.to_fail_kwargs()
    assert kwargs["libvirt_error"]["message"] and kwargs["msg"] == err.msg


def test_libvirt_errors_wraps_once():
    with Connection("test:///default") as conn:
        with pytest.raises(VirtError) as exc:
            with libvirt_errors("defining"):
                conn.virt.defineXML("<domain type='qemu'><name>bad</name><memory>-5</memory></domain>")
        assert exc.value.msg.startswith("defining: ") and exc.value.code == libvirt.VIR_ERR_XML_ERROR
        with pytest.raises(VirtError) as again:
            with libvirt_errors("outer"):
                raise exc.value
        assert again.value is exc.value  # not wrapped twice


def test_busy_detection():
    assert VirtError("x", code=libvirt.VIR_ERR_RESOURCE_BUSY).is_busy
    assert VirtError("resource busy: Lockspace resource 'k' is locked").is_busy
    assert VirtError('Failed to get "write" lock').is_busy
    assert not VirtError("no such file", code=libvirt.VIR_ERR_INTERNAL_ERROR).is_busy


def test_uri_helpers(monkeypatch):
    assert uri_is_local("qemu:///system") and uri_is_local("test:///default")
    assert not uri_is_local("qemu+ssh://root@hv2/system")
    assert uri_is_local("qemu+unix:///system")
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "test:///default")
    assert resolve_uri(None) == "test:///default"
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI")
    assert resolve_uri(None) == "qemu:///system" and resolve_uri("lxc:///") == "lxc:///"
    spec = merge_argument_spec({"name": {"type": "str"}})
    assert set(spec) == {"uri", "name"}


def test_a_remote_hosts_name_never_falls_back_to_this_machines(monkeypatch):
    """A driver without a hostname call: a remote URI names its own host, never the controller's."""

    class NoHostname:
        def getHostname(self):
            raise libvirt.libvirtError("this function is not supported by the connection driver")

    def unopened(uri):  # a Connection as open() leaves it, without reaching the host
        conn = Connection.__new__(Connection)
        conn.uri, conn.readonly, conn.virt, conn._hostname, conn._profile = uri, False, NoHostname(), None, None
        return conn

    monkeypatch.setattr(socket, "gethostname", lambda: "controller")
    assert unopened("qemu+ssh://hv2.example/system").hostname == "hv2.example"
    assert unopened("test:///default").hostname == "controller"
