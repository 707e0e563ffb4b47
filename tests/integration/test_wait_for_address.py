"""``wait_for: address`` of lockstep.virt.domain on the lab.

The guest agent's address: the lab's Linux guest (tests/lab/guest_image.py: no network interface, an agent)
started by the module with ``wait_for: address`` while this test, once the agent answers, adds an address
on the guest's loopback device (192.0.2.0/24, TEST-NET-1): the wait goes on through "agent not connected"
and "loopback only" until the agent reports it.

The DHCP lease is a real one, from the dnsmasq libvirt runs for a network on hv1: a DHCP client in hv1's
namespace (a few lines of Python below, on a veth plugged into the network's bridge) asks for an address
for the guest's MAC while the module waits. The guest itself needs no operating system (a diskless BIOS
guest idles in SeaBIOS): libvirt answers VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE from the network's leases
by the MAC of the guest's interface. A guest with no interface and no agent fails after its wait_timeout,
saying what each source answered.
"""

import os
import random
import sys
import threading
import time
import uuid

import pytest
from agent_helpers import agent_exec, agent_ping
from labkit import REPO
from migrate_helpers import failed

sys.path.insert(0, os.path.join(REPO, "tests", "lab"))
import guest_image

MODULE = "lockstep.virt.domain"

# a DHCP client: DISCOVER, OFFER, REQUEST, ACK for MAC on IFACE, through a packet socket (source 0.0.0.0, as a
# booting guest sends it: the host's IP stack would drop a packet from one of its own addresses); prints the address
DHCP_CLIENT = r"""
import random, socket, struct, sys
iface, mac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", ""))
xid = random.getrandbits(32)
def checksum(data):
    total = sum(struct.unpack("!10H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
def frame(kind, extra=b""):
    dhcp = struct.pack("!BBBBIHH16s16s192s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(16), mac.ljust(16, b"\0"), b"")
    dhcp += b"\x63\x82\x53\x63" + bytes([53, 1, kind]) + extra + b"\xff"
    udp = struct.pack("!HHHH", 68, 67, 8 + len(dhcp), 0) + dhcp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), b"\xff" * 4)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return b"\xff" * 6 + mac + b"\x08\x00" + ip + udp
def options(data):
    out, i = {}, 240
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        out[data[i]] = data[i + 2:i + 2 + data[i + 1]]
        i += 2 + data[i + 1]
    return out
def exchange(sock, packet, kind):  # sent again every 2 s (a new bridge port may not forward yet)
    for _attempt in range(15):
        sock.send(packet)
        sock.settimeout(2)
        try:
            while True:
                raw = sock.recv(4096)
                if raw[12:14] != b"\x08\x00" or raw[23] != 17:
                    continue
                data = raw[14 + (raw[14] & 15) * 4 + 8:]
                if len(data) > 240 and data[0] == 2 and struct.unpack("!I", data[4:8])[0] == xid:
                    opts = options(data)
                    if opts.get(53) == bytes([kind]):
                        return data[16:20], opts
        except socket.timeout:
            continue
    sys.exit("no DHCP reply of type {}".format(kind))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind((iface, 0))
offered, opts = exchange(s, frame(1), 2)
acked, _opts = exchange(s, frame(3, bytes([50, 4]) + offered + bytes([54, 4]) + opts[54]), 5)
print(socket.inet_ntoa(acked))
"""


@pytest.fixture
def network(lab):
    hv1 = lab.hosts[0]
    suffix = uuid.uuid4().hex[:6]
    net = {"name": "it-wf-" + suffix, "bridge": "itw" + suffix, "net": "10.79.{}".format(random.randint(20, 249))}
    spec = {
        "forward": "nat",
        "bridge": net["bridge"],
        "ipv4": {
            "address": net["net"] + ".1",
            "prefix": 24,
            "dhcp_range": {"start": net["net"] + ".100", "end": net["net"] + ".199"},
        },
    }
    made = lab.module(hv1, "lockstep.virt.network", {"name": net["name"], "state": "active", "spec": spec})
    assert not failed(made), made.get("msg")
    net["veth"] = "iwv" + suffix
    yield net
    lab.exec(hv1, "ip", "link", "del", net["veth"], check=False)
    lab.virsh(hv1, "net-destroy", net["name"], check=False)
    lab.virsh(hv1, "net-undefine", net["name"], check=False)


def module_while(lab, host, args, meanwhile):
    """The module's result on ``host``, run while ``meanwhile`` runs beside it (what the guest or its network
    does while the module waits)."""
    thread = threading.Thread(target=meanwhile)
    thread.start()
    try:
        return lab.module(host, MODULE, args)
    finally:
        thread.join(timeout=300)


def dhcp_for(lab, host, net, mac):
    """A real lease from the network's dnsmasq for ``mac``, asked from a veth on the network's bridge."""
    veth, peer = net["veth"], net["veth"] + "p"
    lab.exec(host, "ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
    lab.exec(host, "ip", "link", "set", peer, "master", net["bridge"], "up")
    lab.exec(host, "ip", "link", "set", veth, "up")
    return lab.exec(host, "python3", "-c", DHCP_CLIENT, veth, mac, timeout=60).stdout.strip()


def test_wait_for_address_returns_the_dhcp_lease(lab, network, guest_name):
    hv1 = lab.hosts[0]
    mac = "52:54:00:79:{:02x}:{:02x}".format(random.randint(0, 255), random.randint(0, 255))
    spec = {"type": "qemu", "memory": 32, "boot": ["hd"], "interfaces": [{"network": network["name"], "mac": mac}]}
    args = {"name": guest_name, "state": "running", "spec": spec, "wait_for": "address", "wait_timeout": 180}
    leased = []

    def client():  # once the guest runs, while the module waits for its address
        deadline = time.monotonic() + 120
        while lab.domain_state(hv1, guest_name) != "running" and time.monotonic() < deadline:
            time.sleep(0.5)
        leased.append(dhcp_for(lab, hv1, network, mac))

    first = module_while(lab, hv1, args, client)
    assert leased and leased[0].startswith(network["net"] + "."), leased
    assert not failed(first), first.get("msg")
    assert first["changed"] is True and first["actions"] == ["define", "start"]
    assert [(a["address"], a["mac"], a["family"], a["prefix"], a["source"]) for a in first["addresses"]] == [
        (leased[0], mac, "ipv4", 24, "lease")
    ], first["addresses"]

    again = lab.module(hv1, MODULE, args)
    assert again["changed"] is False and again["actions"] == []  # waiting is never a change
    assert [a["address"] for a in again["addresses"]] == leased


def test_wait_for_address_fails_after_the_timeout_saying_what_was_tried(lab, guest_name):
    hv1 = lab.hosts[0]
    spec = {"type": "qemu", "memory": 32, "boot": ["hd"]}
    args = {"name": guest_name, "state": "running", "spec": spec, "wait_for": "address", "wait_timeout": 3}
    res = lab.module_fails(hv1, MODULE, args)
    assert "{} has no address after 3 s".format(guest_name) in res["msg"], res["msg"]
    assert "agent: cannot read the agent addresses" in res["msg"] and "not configured" in res["msg"], res["msg"]
    assert "lease: no address" in res["msg"], res["msg"]
    assert res["address_sources"]["lease"] == "no address" and res["addresses"] == []
    assert res["changed"] is True and lab.domain_state(hv1, guest_name) == "running"  # started, then waited


def test_wait_for_address_reads_the_guest_agent(lab, lab_image, guest_name):
    hv1 = lab.hosts[0]
    address = "192.0.2.{}".format(10 + uuid.uuid4().int % 200)
    spec = {
        "type": "qemu",
        "memory": guest_image.MEMORY_MIB,
        "kernel": os.path.join(guest_image.IMAGE_DIR, "vmlinuz"),
        "initrd": os.path.join(guest_image.IMAGE_DIR, "initrd.img"),
        "cmdline": lab_image.get("cmdline", guest_image.CMDLINE),
        "features": ["acpi"],
        "serial_console": True,
        "guest_agent": True,
    }
    args = {"name": guest_name, "state": "running", "spec": spec, "wait_for": "address", "wait_timeout": 300}
    added = []

    def add_address():  # once the agent answers, while the module waits
        deadline = time.monotonic() + 280
        while not agent_ping(lab, hv1, guest_name):
            if time.monotonic() > deadline:
                return
            time.sleep(1)
        agent_exec(lab, hv1, guest_name, "ip addr add {}/24 dev lo".format(address))
        added.append(address)

    res = module_while(lab, hv1, args, add_address)
    assert added, "the guest agent never answered"
    assert not failed(res), res.get("msg")
    assert res["actions"] == ["define", "start"]
    assert [(a["interface"], a["address"], a["prefix"], a["family"], a["source"]) for a in res["addresses"]] == [
        ("lo", address, 24, "ipv4", "agent")
    ], res["addresses"]
