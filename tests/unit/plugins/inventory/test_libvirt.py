"""lockstep.virt.libvirt inventory: listing parsing, filters, groups and the connection variables (no lab)."""

import shlex
import threading

import pytest
from ansible import constants as C
from ansible.errors import AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import fragment_loader
from ansible.utils.plugin_docs import get_docstring

from ansible_collections.lockstep.virt.plugins.inventory import libvirt as plugin
from ansible_collections.lockstep.virt.plugins.plugin_utils import _agent_ssh as ga
from ansible_collections.lockstep.virt.tests.unit.fakes.units import EVERY_UNIT

NAME = "lockstep.virt.libvirt"


def domain(name, state, agent=True, connected="connected", memory="131072", unit="KiB"):
    channel = (
        "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' state='{}'/></channel>".format(
            connected
        )
        if agent
        else ""
    )
    return (
        "{mark} {state}\n<domain type='qemu'><name>{name}</name><uuid>uuid-{name}</uuid>"
        "<memory unit='{unit}'>{memory}</memory><vcpu placement='static'>2</vcpu><devices>{channel}</devices>"
        "</domain>\n"
    ).format(mark=ga._MARK, state=state, name=name, unit=unit, memory=memory, channel=channel)


LISTINGS = {
    "10.0.0.1": domain("web1", "running")
    + domain("db1", "shut off", connected=None)
    + domain("bios", "running", agent=False)
    + domain("moved", "shut off"),
    "10.0.0.2": domain("moved", "running", memory="256", unit="MiB") + domain("paused1", "paused"),
}


# `virsh -q domifaddr --full --source agent|lease NAME` as virsh 9 prints it (captured on the lab)
AGENT_ADDRESSES = {
    "web1": " lo         00:00:00:00:00:00    ipv4         127.0.0.1/8\n"
    " lo         00:00:00:00:00:00    ipv6         ::1/128\n"
    " eth0       52:54:00:aa:00:01    ipv6         fe80::5054:ff:feaa:1/64\n"
    " eth0       52:54:00:aa:00:01    ipv6         2001:db8::10/64\n"
    " eth0       52:54:00:aa:00:01    ipv4         192.0.2.10/24\n",
    "moved": " lo         00:00:00:00:00:00    ipv4         127.0.0.1/8\n",
}
LEASE_ADDRESSES = {
    "web1": " vnet0      52:54:00:aa:00:01    ipv4         192.0.2.99/24\n",
    "moved": " vnet3      52:54:00:aa:00:02    ipv4         198.51.100.7/24\n",
}
SEEN = []  # commands the fake hypervisors ran
FAILING = set()  # hosts whose SSH breaks
BARRIER = {}  # a threading.Barrier every listing waits at, when a test sets one


class FakeSSH:
    def __init__(self, host):
        self.host = host
        self.label = "root@{}:22".format(host)

    def run(self, command, stdin=None, timeout=None):
        SEEN.append((self.host, command))
        if self.host in FAILING:
            raise plugin.AnsibleConnectionFailure("SSH to hypervisor {} broke".format(self.label))
        if "domifaddr" in command:
            return 0, self._addresses(command).encode(), b""
        assert "list --all --name" in command and "dumpxml" in command
        assert shlex.split(command)[3] == "qemu:///system"
        if BARRIER.get("listing"):
            BARRIER["listing"].wait()  # threading.BrokenBarrierError when the hypervisors are read one by one
        return 0, LISTINGS[self.host].encode(), b""

    @staticmethod
    def _addresses(command):
        out = []
        for part in command.split("; "):
            words = shlex.split(part)
            if words[0] == "printf":
                out.append("{} {} {}\n".format(words[2], words[3], words[4]))
            elif words[0] == "virsh":
                i = words.index("--source")
                source, name = words[i + 1], words[i + 2]
                out.append((AGENT_ADDRESSES if source == "agent" else LEASE_ADDRESSES).get(name, ""))
        return "".join(out)


@pytest.fixture(autouse=True)
def _fresh_fakes():
    SEEN.clear()
    FAILING.clear()
    BARRIER.clear()
    yield
    BARRIER.clear()


@pytest.fixture
def inventory(monkeypatch, tmp_path):
    doc = get_docstring(plugin.__file__, fragment_loader)[0]
    C.config.initialize_plugin_configuration_definitions("inventory", NAME, doc["options"])
    opened = []

    def fake_hypervisor(host, **kw):
        opened.append((host, kw))
        return FakeSSH(host)

    monkeypatch.setattr(plugin, "hypervisor", fake_hypervisor)

    def run(config, cache=False):
        path = tmp_path / "lab.libvirt.yml"
        path.write_text(config)
        inv = plugin.InventoryModule()
        inv._load_name = NAME
        data = InventoryData()
        assert inv.verify_file(str(path))
        inv.parse(data, DataLoader(), str(path), cache=cache)
        if getattr(inv, "_cache", None) is not None and inv.get_option("cache"):
            inv.update_cache_if_changed()  # what ansible-core's InventoryManager does after a parse
        return data, opened

    return run


BASE = """
plugin: lockstep.virt.libvirt
hypervisors:
  - {name: hv1, host: 10.0.0.1}
  - {name: hv2, host: 10.0.0.2, port: 2222}
private_key_file: /keys/id
known_hosts_file: /keys/known_hosts
"""


def test_verify_file_names(tmp_path):
    inv = plugin.InventoryModule()
    for name, ok in (("a.libvirt.yml", True), ("libvirt.yaml", True), ("guests.yml", False)):
        p = tmp_path / name
        p.write_text("plugin: lockstep.virt.libvirt\n")
        assert inv.verify_file(str(p)) is ok


def test_running_guests_with_agent_by_default(inventory):
    data, opened = inventory(BASE)
    assert sorted(data.hosts) == ["moved", "web1"]
    web1 = data.hosts["web1"].get_vars()
    assert web1["ansible_connection"] == "lockstep.virt.guest_agent"
    assert web1["guest_agent_hypervisor_host"] == "10.0.0.1"
    assert web1["guest_agent_hypervisor_private_key_file"] == "/keys/id"
    assert web1["guest_agent_known_hosts_file"] == "/keys/known_hosts"
    assert web1["guest_agent_domain"] == "web1"
    assert web1["guest_agent_libvirt_uri"] == "qemu:///system"
    assert web1["libvirt_memory_mib"] == 128 and web1["libvirt_vcpus"] == 2
    assert web1["libvirt_agent_state"] == "connected"
    moved = data.hosts["moved"].get_vars()
    assert moved["libvirt_hypervisor"] == "hv2" and moved["guest_agent_hypervisor_port"] == 2222
    assert moved["libvirt_memory_mib"] == 256
    assert {g.name for g in data.hosts["moved"].groups} >= {"libvirt_state_running", "libvirt_hypervisor_hv2"}
    assert opened[0][1]["known_hosts_file"] == "/keys/known_hosts" and opened[0][1]["host_key_checking"] is True


def test_all_states_and_patterns(inventory):
    data, _cache = inventory(BASE + "states: []\nrequire_agent_channel: false\n")
    assert sorted(data.hosts) == ["bios", "db1", "moved", "paused1", "web1"]
    assert data.hosts["moved"].get_vars()["libvirt_hypervisor"] == "hv2"  # the running one wins
    assert "libvirt_state_shut_off" in data.groups and "libvirt_state_paused" in data.groups
    data, _cache = inventory(BASE + "states: [shut off, paused]\nname_patterns: ['d', 'p']\n")
    assert sorted(data.hosts) == ["db1", "paused1"]


def test_constructable(inventory):
    data, _cache = inventory(
        BASE
        + """
compose:
  ansible_python_interpreter: "'/usr/bin/python3'"
groups:
  big: libvirt_memory_mib > 200
keyed_groups:
  - key: libvirt_hypervisor
    prefix: placed
"""
    )
    assert data.hosts["web1"].get_vars()["ansible_python_interpreter"] == "/usr/bin/python3"
    assert [h.name for h in data.groups["big"].get_hosts()] == ["moved"]
    assert [h.name for h in data.groups["placed_hv1"].get_hosts()] == ["web1"]


@pytest.mark.parametrize(
    "entry,message",
    [("{host: h, colour: red}", "unknown hypervisor keys: colour"), ("{name: h}", "each hypervisor needs a host")],
)
def test_bad_hypervisor_entry(inventory, entry, message):
    with pytest.raises(AnsibleParserError, match=message):
        inventory("plugin: lockstep.virt.libvirt\nhypervisors: [{}]\n".format(entry))


def test_parse_listing_skips_garbage():
    text = ga._MARK + " running\n<domain><name>x</na\n" + domain("ok", "running")
    assert [g["name"] for g in ga.parse_domain_listing(text)] == ["ok"]


@pytest.mark.parametrize("unit,factor", EVERY_UNIT)
def test_guest_memory_in_the_inventory_listing(unit, factor):
    xml = "<domain><name>g</name><memory unit='{}'>{}</memory></domain>".format(unit, 4 * 1048576 * 1000)
    (guest,) = ga.parse_domain_listing(ga._MARK + " running\n" + xml + "\n")
    assert guest["memory_mib"] == 4 * 1000 * factor


def test_agent_connection_only_where_the_guest_has_a_channel(inventory):
    data, _opened = inventory(BASE + "states: []\nrequire_agent_channel: false\n")
    bios = data.hosts["bios"].get_vars()
    assert "ansible_connection" not in bios
    assert not any(key.startswith("guest_agent_") for key in bios)
    assert bios["libvirt_agent_channel"] is False
    web1 = data.hosts["web1"].get_vars()
    assert web1["ansible_connection"] == "lockstep.virt.guest_agent" and web1["libvirt_agent_channel"] is True
    data, _opened = inventory(BASE + "agent_connection: false\n")
    assert "ansible_connection" not in data.hosts["web1"].get_vars()
    assert "guest_agent_domain" not in data.hosts["web1"].get_vars()


def test_no_address_read_unless_asked(inventory):
    data, _opened = inventory(BASE)
    assert not any("domifaddr" in command for _host, command in SEEN)
    assert "ansible_host" not in data.hosts["web1"].get_vars()
    assert "libvirt_addresses" not in data.hosts["web1"].get_vars()


def test_ansible_host_from_the_agent_then_the_lease(inventory):
    data, _opened = inventory(BASE + "states: []\nansible_host_from: [agent, lease]\n")
    web1 = data.hosts["web1"].get_vars()
    assert web1["ansible_host"] == "192.0.2.10"  # the agent's, not loopback, not the lease
    assert {"interface": "eth0", "mac": "52:54:00:aa:00:01", "family": "ipv4", "address": "192.0.2.10",
            "prefix": 24, "source": "agent"} in web1["libvirt_addresses"]  # fmt: skip
    assert {a["source"] for a in web1["libvirt_addresses"]} == {"agent", "lease"}
    # the agent knows only loopback: the lease is next
    assert data.hosts["moved"].get_vars()["ansible_host"] == "198.51.100.7"
    # addresses are read only for running guests, in one command per hypervisor
    asked = [command for _host, command in SEEN if "domifaddr" in command]
    assert len(asked) == 2
    assert all("db1" not in command and "paused1" not in command for command in asked)
    assert "ansible_host" not in data.hosts["paused1"].get_vars()


def test_ansible_host_lease_first_and_families(inventory):
    data, _opened = inventory(BASE + "ansible_host_from: [lease, agent]\n")
    assert data.hosts["web1"].get_vars()["ansible_host"] == "192.0.2.99"
    data, _opened = inventory(BASE + "ansible_host_from: [agent]\naddress_family: ipv6\n")
    assert data.hosts["web1"].get_vars()["ansible_host"] == "2001:db8::10"  # not link-local fe80::
    assert "ansible_host" not in data.hosts["moved"].get_vars()  # only loopback from its agent
    data, _opened = inventory(BASE + "ansible_host_from: [agent]\naddress_family: any\n")
    assert data.hosts["web1"].get_vars()["ansible_host"] == "192.0.2.10"


def test_parse_addresses_and_choice():
    text = (
        plugin._ADDR_MARK + " agent g1\n" + AGENT_ADDRESSES["web1"] + plugin._ADDR_MARK + " lease g1\n"
        " Name       MAC address          Protocol     Address\n"
        "-------------------------------------------------------------------------------\n"
        + LEASE_ADDRESSES["web1"]
        + plugin._ADDR_MARK + " agent g2\n"
    )  # fmt: skip
    found = plugin.parse_addresses(text)
    assert sorted(found) == ["g1", "g2"] and found["g2"] == []
    assert [a["address"] for a in found["g1"]] == ["127.0.0.1", "::1", "fe80::5054:ff:feaa:1", "2001:db8::10",
                                                   "192.0.2.10", "192.0.2.99"]  # fmt: skip
    assert plugin.choose_address(found["g1"], ["lease", "agent"]) == "192.0.2.99"
    assert plugin.choose_address(found["g1"][:3], ["agent"], "any") is None


def test_hypervisors_are_read_in_parallel(inventory):
    BARRIER["listing"] = threading.Barrier(2, timeout=5)
    data, _opened = inventory(BASE)
    assert sorted(data.hosts) == ["moved", "web1"]


def test_concurrency_one_reads_one_hypervisor_at_a_time(inventory):
    BARRIER["listing"] = threading.Barrier(2, timeout=1)
    with pytest.raises(threading.BrokenBarrierError):
        inventory(BASE + "concurrency: 1\n")


def test_unreachable_hypervisor_in_parallel(inventory):
    FAILING.add("10.0.0.1")
    with pytest.raises(AnsibleParserError, match="hypervisor hv1: SSH to hypervisor root@10.0.0.1:22 broke"):
        inventory(BASE)
    data, _opened = inventory(BASE + "strict_hypervisors: false\n")
    assert sorted(data.hosts) == ["moved", "paused1"][:1]  # hv2's running guest with an agent channel
    assert data.hosts["moved"].get_vars()["libvirt_hypervisor"] == "hv2"


CACHED = (
    BASE
    + """
ansible_host_from: [agent]
cache: true
cache_plugin: jsonfile
cache_connection: CACHE_DIR
cache_timeout: 600
"""
)


def test_cache(inventory, tmp_path):
    config = CACHED.replace("CACHE_DIR", str(tmp_path / "cache"))
    data, _opened = inventory(config, cache=False)  # --flush-cache: read and store
    assert len(SEEN) == 4 and data.hosts["web1"].get_vars()["ansible_host"] == "192.0.2.10"
    assert list((tmp_path / "cache").iterdir())
    SEEN.clear()
    FAILING.update({"10.0.0.1", "10.0.0.2"})  # the hypervisors are not needed while the cache is valid
    data, _opened = inventory(config, cache=True)
    assert SEEN == []
    assert sorted(data.hosts) == ["moved", "web1"]
    web1 = data.hosts["web1"].get_vars()
    assert web1["ansible_host"] == "192.0.2.10" and web1["ansible_connection"] == "lockstep.virt.guest_agent"
    assert web1["libvirt_hypervisor"] == "hv1"
    # without the cache option nothing is read from it
    with pytest.raises(AnsibleParserError, match="broke"):
        inventory(config.replace("cache: true", "cache: false"), cache=True)


def test_cache_miss_reads_the_hypervisors(inventory, tmp_path):
    data, _opened = inventory(CACHED.replace("CACHE_DIR", str(tmp_path / "empty")), cache=True)
    assert len(SEEN) == 4 and sorted(data.hosts) == ["moved", "web1"]
