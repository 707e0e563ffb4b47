"""lockstep.virt.libvirt inventory: listing parsing, filters, groups and the connection variables (no lab)."""

import shlex

import pytest
from ansible import constants as C
from ansible.errors import AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import fragment_loader
from ansible.utils.plugin_docs import get_docstring

from ansible_collections.lockstep.virt.plugins.inventory import libvirt as plugin
from ansible_collections.lockstep.virt.plugins.plugin_utils import _agent_ssh as ga
from ansible_collections.lockstep.virt.tests.unit.plugins.module_utils.test_units import EVERY_UNIT

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


class FakeSSH:
    def __init__(self, host):
        self.host = host
        self.label = "root@{}:22".format(host)

    def run(self, command, stdin=None, timeout=None):
        assert "list --all --name" in command and "dumpxml" in command
        assert shlex.split(command)[3] == "qemu:///system"
        return 0, LISTINGS[self.host].encode(), b""


@pytest.fixture
def inventory(monkeypatch, tmp_path):
    doc = get_docstring(plugin.__file__, fragment_loader)[0]
    C.config.initialize_plugin_configuration_definitions("inventory", NAME, doc["options"])
    opened = []

    def fake_hypervisor(host, **kw):
        opened.append((host, kw))
        return FakeSSH(host)

    monkeypatch.setattr(plugin, "hypervisor", fake_hypervisor)

    def run(config):
        path = tmp_path / "lab.libvirt.yml"
        path.write_text(config)
        inv = plugin.InventoryModule()
        inv._load_name = NAME
        data = InventoryData()
        assert inv.verify_file(str(path))
        inv.parse(data, DataLoader(), str(path), cache=False)
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
