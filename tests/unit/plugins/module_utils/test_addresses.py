"""A guest's addresses and the wait for one, against a fake domain answering as libvirt's Python binding does:
``interfaceAddresses`` returns ``{}`` when a source knows no address and raises libvirtError when it cannot
answer (the agent not connected yet: VIR_ERR_AGENT_UNRESPONSIVE; no agent channel: VIR_ERR_ARGUMENT_UNSUPPORTED)."""

import libvirt
import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.addresses import (
    guest_addresses,
    read_addresses,
    wait_for_addresses,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import VirtError
from ansible_collections.lockstep.virt.tests.unit.fakes.clock import FakeClock

AGENT = libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT
LEASE = libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE
V4, V6 = libvirt.VIR_IP_ADDR_TYPE_IPV4, libvirt.VIR_IP_ADDR_TYPE_IPV6
LOOPBACK = {"lo": {"hwaddr": "00:00:00:00:00:00", "addrs": [{"addr": "127.0.0.1", "prefix": 8, "type": V4}]}}
LINK_LOCAL = {"eth0": {"hwaddr": "52:54:00:AA:00:01", "addrs": [{"addr": "fe80::1", "prefix": 64, "type": V6}]}}
BOOTED = {
    "lo": LOOPBACK["lo"],
    "eth0": {
        "hwaddr": "52:54:00:AA:00:01",
        "addrs": [{"addr": "192.168.122.5", "prefix": 24, "type": V4}, {"addr": "fe80::1", "prefix": 64, "type": V6}],
    },
}
LEASED = {"vnet0": {"hwaddr": "52:54:00:aa:00:01", "addrs": [{"addr": "192.168.122.5", "prefix": 24, "type": V4}]}}


def _error(code, message):
    err = libvirt.libvirtError(message)
    err.err = (code, libvirt.VIR_FROM_QEMU, message, 2, None, None, None, -1, -1)
    return err


UNRESPONSIVE = _error(
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding: QEMU guest agent is not connected"
)
NO_CHANNEL = _error(libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, "argument unsupported: QEMU guest agent is not configured")


class FakeDomain:
    """Answers each poll with the next entry of ``agent`` / ``lease`` (the last one repeats): a dict is
    returned, an exception raised."""

    def __init__(self, agent, lease, active=True):
        self.answers = {AGENT: list(agent), LEASE: list(lease)}
        self.calls = []
        self.active = active

    def name(self):
        return "g1"

    def isActive(self):
        return 1 if self.active else 0

    def interfaceAddresses(self, source, flags):
        self.calls.append(source)
        queue = self.answers[source]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_read_addresses_flattens_libvirt_answer():
    assert read_addresses(FakeDomain([BOOTED], [{}]), "agent") == [
        {
            "interface": "lo",
            "mac": "00:00:00:00:00:00",
            "address": "127.0.0.1",
            "prefix": 8,
            "family": "ipv4",
            "source": "agent",
        },
        {
            "interface": "eth0",
            "mac": "52:54:00:aa:00:01",
            "address": "192.168.122.5",
            "prefix": 24,
            "family": "ipv4",
            "source": "agent",
        },
        {
            "interface": "eth0",
            "mac": "52:54:00:aa:00:01",
            "address": "fe80::1",
            "prefix": 64,
            "family": "ipv6",
            "source": "agent",
        },
    ]


def test_read_addresses_raises_with_libvirts_code():
    with pytest.raises(VirtError) as exc:
        read_addresses(FakeDomain([UNRESPONSIVE], [{}]), "agent")
    assert exc.value.code == libvirt.VIR_ERR_AGENT_UNRESPONSIVE and "not connected" in exc.value.msg


def test_agent_first_then_lease_and_only_usable_addresses():
    found, seen = guest_addresses(FakeDomain([BOOTED], [LEASED]))
    assert [(a["address"], a["source"]) for a in found] == [("192.168.122.5", "agent")]
    assert list(seen) == ["agent"]
    found, seen = guest_addresses(FakeDomain([NO_CHANNEL], [LEASED]))
    assert [(a["interface"], a["mac"], a["source"]) for a in found] == [("vnet0", "52:54:00:aa:00:01", "lease")]
    assert "not configured" in seen["agent"]


def test_wait_polls_until_the_agent_connects_and_reports_an_address():
    clock = FakeClock()
    dom = FakeDomain([UNRESPONSIVE, UNRESPONSIVE, LOOPBACK, LINK_LOCAL, BOOTED], [{}])
    found = wait_for_addresses(dom, 60, sleep=clock.sleep, clock=clock, poll=1.0)
    assert [a["address"] for a in found] == ["192.168.122.5"]
    assert dom.calls.count(AGENT) == 5 and clock.now == 4.0


def test_wait_takes_the_lease_while_the_agent_is_silent():
    clock = FakeClock()
    found = wait_for_addresses(FakeDomain([UNRESPONSIVE], [{}, {}, LEASED]), 60, sleep=clock.sleep, clock=clock)
    assert [(a["address"], a["source"]) for a in found] == [("192.168.122.5", "lease")]


def test_wait_fails_after_the_timeout_with_what_each_source_answered():
    clock = FakeClock()
    with pytest.raises(VirtError) as exc:
        wait_for_addresses(FakeDomain([LOOPBACK, UNRESPONSIVE], [{}]), 3, sleep=clock.sleep, clock=clock, poll=1.0)
    msg = exc.value.msg
    assert msg.startswith("g1 has no address after 3 s (4 tries of the sources agent, lease")
    assert "agent: cannot read the agent addresses of g1: Guest agent is not responding" in msg
    assert "lease: no address" in msg
    assert exc.value.result["addresses"] == [] and set(exc.value.result["address_sources"]) == {"agent", "lease"}


def test_wait_stops_when_the_guest_stops():
    with pytest.raises(VirtError) as exc:
        wait_for_addresses(FakeDomain([{}], [{}], active=False), 60, sleep=pytest.fail)
    assert "g1 stopped while waiting for its address" in exc.value.msg
