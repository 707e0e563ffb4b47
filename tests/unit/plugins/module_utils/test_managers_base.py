"""The one converge sequence (managers/base.py) and the host views it reads through (objects.Host, HostCache),
against libvirt's test:///default driver."""

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.lockstep.virt.plugins.module_utils._virt.connection import Connection
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.apply import ApplyManager
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.base import DefinedManager, keep_generated
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.domain import (
    DOMAIN_ARGUMENT_SPEC,
    DomainManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.network import NetworkManager
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.pool import PoolManager
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, POOL, VOLUME, HostCache
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import parse_xml

URI = "test:///default"


class CountingVirt:
    """The real virConnect, with the number of calls of each method counted."""

    def __init__(self, virt):
        self._virt = virt
        self.calls = {}

    def __getattr__(self, name):
        attr = getattr(self._virt, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)

        return counted


@pytest.fixture
def conn(hv):
    c = Connection(URI)
    yield c
    c.close()


def domain_item(name, state="present"):
    return {"name": name, "state": state, "spec": {"memory": 32, "vcpus": 1}}


def domain_params(name, state="present"):
    """Parameters as the domain module's argument spec makes them."""
    return ArgumentSpecValidator(DOMAIN_ARGUMENT_SPEC).validate(domain_item(name, state)).validated_parameters


def test_every_defined_kind_runs_the_one_sequence():
    for cls in (DomainManager, NetworkManager, PoolManager):
        assert issubclass(cls, DefinedManager)
        assert "_run" not in vars(cls) and "_remove" not in vars(cls) and "_pending_restart" not in vars(cls)


def test_keep_generated_keeps_what_libvirt_made_and_what_was_given():
    existing = parse_xml("<network><name>n</name><uuid>u-1</uuid><mac address='52:54:00:00:00:01'/></network>")
    desired = parse_xml("<network><name>n</name><mac address='52:54:00:00:00:02'/></network>")
    out = keep_generated(desired, existing, ("uuid", "mac"))
    assert out.find("uuid").text == "u-1" and out.find("mac").get("address") == "52:54:00:00:00:02"
    assert out[0].tag == "name" and out[1].tag == "uuid"
    assert desired.find("uuid") is None  # a copy: the desired element is left as it was
    assert keep_generated(desired, None) is not desired


@pytest.mark.parametrize("diff_mode", [False, True])
def test_diff_only_when_asked_and_outcome(conn, diff_mode):
    m = DomainManager(conn, domain_params("t1"), diff_mode=diff_mode)
    r = m.run()
    assert r["actions"] == ["define"] and m.outcome() == "created"
    assert ("diff" in r) is diff_mode
    m = DomainManager(conn, domain_params("t1"), diff_mode=diff_mode)
    assert m.run()["changed"] is False and m.outcome() == "unchanged"
    m = DomainManager(conn, domain_params("t1", state="absent"), diff_mode=diff_mode)
    assert m.run()["actions"] == ["undefine"] and m.outcome() == "removed"
    m = DomainManager(conn, domain_params("t1", state="absent"))
    assert m.run()["changed"] is False and m.outcome() == "unchanged"


def test_brief_leaves_out_the_summary_and_leases(conn):
    r = DomainManager(conn, domain_params("t2", state="running"), brief=True).run()
    assert r["actions"] == ["define", "start"] and "domain" not in r and "leases" not in r
    assert [c["name"] for c in r["lock_checkpoints"]][0] == "defined"


def test_snapshot_reads_the_host_once(conn, hv):
    for i in range(5):
        DomainManager(conn, domain_params("s{}".format(i), state="running" if i % 2 else "present")).run()
    counting = CountingVirt(conn.virt)
    conn.virt = counting
    items = [domain_item("s{}".format(i), state="running" if i % 2 else "present") for i in range(5)]
    result = ApplyManager(conn, {"domains": items, "prune": False, "lock": {}}).run()
    assert result["changed"] is False and result["summary"]["unchanged"] == 5
    # one listing per kind, no lookup by name, no XML read through the connection
    assert counting.calls.get("listAllDomains") == 1 and counting.calls.get("listAllNetworks") == 1
    assert "lookupByName" not in counting.calls and "networkLookupByName" not in counting.calls
    assert "defineXML" not in counting.calls


def test_snapshot_follows_what_the_run_changes(conn, hv):
    snap = HostCache(conn)
    assert snap.lookup(DOMAIN, "test") is not None and snap.lookup(DOMAIN, "nope") is None
    assert snap.names(DOMAIN) == ["test"]
    pool = snap.lookup(POOL, "default-pool")
    assert snap.volume("default-pool", "v1") is None
    vol = pool.createXML("<volume><name>v1</name><capacity>1024</capacity></volume>", 0)
    snap.put(VOLUME, "v1", vol, "default-pool")
    assert snap.volume("default-pool", "v1") is not None and snap.volume_path("default-pool", "v1") == vol.path()
    snap.planned(DOMAIN, "later")
    assert snap.lookup(DOMAIN, "later").isActive() and snap.names(DOMAIN) == ["test"]
    snap.drop(DOMAIN, "test")
    assert snap.lookup(DOMAIN, "test") is None
    snap.fail(POOL, "p9", "it broke")
    assert snap.failure(POOL, "p9") == "it broke" and snap.failure(POOL, "p8") is None
