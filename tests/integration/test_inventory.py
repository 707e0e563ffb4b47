"""lockstep.virt.libvirt inventory on three lab hypervisors read at once: a guest with the guest agent (reached
through it, ansible_host from its agent's addresses), a guest without an agent channel (no guest_agent
connection), a shut-off guest on the third host, and the inventory cache.

The lab image has no network interface, so the address the agent reports is one the test adds inside the
guest (through the agent) on its loopback device: 192.0.2.0/24 (TEST-NET-1), which the plugin takes like any
other address, where 127.0.0.1 and ::1 are never chosen.
"""

import os
import tempfile
import uuid

import pytest
import yaml
from agent_helpers import KEY, KNOWN_HOSTS, agent_exec, boot_guest, inventory_of, run

ADDRESS = "192.0.2.{}".format(10 + uuid.uuid4().int % 200)

BARE_XML = (
    "<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
    "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>{channel}</devices></domain>"
)
CHANNEL = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"


def three_hosts(lab):
    hosts = lab.all_hosts
    if len(hosts) < 3:
        pytest.skip("needs a lab of 3 hypervisors (tests/lab/lab up --hosts 3, or --hosts 2 --unlocked 1)")
    return hosts[:3]


def define(lab, host, name, channel):
    with tempfile.NamedTemporaryFile("w", suffix=".xml", dir=lab.shared_dir, delete=False) as fh:
        fh.write(BARE_XML.format(name=name, channel=CHANNEL if channel else ""))
    try:
        lab.virsh(host, "define", fh.name)
    finally:
        os.unlink(fh.name)


@pytest.fixture(scope="module")
def three_guests(lab, lab_image):
    hosts = three_hosts(lab)
    prefix = "inv-" + uuid.uuid4().hex[:6]
    names = {"agent": prefix + "-agent", "bare": prefix + "-bare", "off": prefix + "-off"}
    try:
        boot_guest(lab, hosts[0], names["agent"])
        agent_exec(lab, hosts[0], names["agent"], "ip addr add {}/24 dev lo".format(ADDRESS))
        define(lab, hosts[1], names["bare"], channel=False)
        lab.virsh(hosts[1], "start", names["bare"])
        define(lab, hosts[2], names["off"], channel=True)
        yield prefix, names, hosts
    finally:
        for name in names.values():
            lab.cleanup_domain(name)


def config_file(lab, directory, prefix, hosts, cache_dir):
    path = os.path.join(directory, "three.libvirt.yml")
    config = {
        "plugin": "lockstep.virt.libvirt",
        "hypervisors": [{"name": h, "host": lab.address(h)} for h in hosts],
        "private_key_file": KEY,
        "known_hosts_file": KNOWN_HOSTS,
        "name_patterns": ["^{}-".format(prefix)],
        "states": [],
        "require_agent_channel": False,
        "ansible_host_from": ["agent", "lease"],
        "compose": {"ansible_python_interpreter": "'/usr/bin/python3'", "guest_agent_command_timeout": 240},
        "cache": True,
        "cache_plugin": "ansible.builtin.jsonfile",
        "cache_connection": cache_dir,
        "cache_timeout": 3600,
    }
    with open(path, "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    return path


def test_three_hypervisors_addresses_connections_and_cache(lab, three_guests):
    prefix, names, hosts = three_guests
    with tempfile.TemporaryDirectory(prefix="inv-test-") as tmp:
        config = config_file(lab, tmp, prefix, hosts, os.path.join(tmp, "cache"))
        listed = inventory_of(lab, config)
        hostvars = listed["_meta"]["hostvars"]
        assert sorted(hostvars) == sorted(names.values())

        agent = hostvars[names["agent"]]
        assert agent["libvirt_hypervisor"] == hosts[0] and agent["libvirt_state"] == "running"
        assert agent["ansible_connection"] == "lockstep.virt.guest_agent"
        assert agent["guest_agent_hypervisor_host"] == lab.address(hosts[0])
        assert agent["ansible_host"] == ADDRESS  # the agent's address, not 127.0.0.1
        assert {a["address"] for a in agent["libvirt_addresses"] if a["source"] == "agent"} >= {"127.0.0.1", ADDRESS}

        bare = hostvars[names["bare"]]
        assert bare["libvirt_hypervisor"] == hosts[1] and bare["libvirt_state"] == "running"
        assert bare["libvirt_agent_channel"] is False
        assert "ansible_connection" not in bare and "guest_agent_domain" not in bare
        assert "ansible_host" not in bare and bare["libvirt_addresses"] == []

        off = hostvars[names["off"]]
        assert off["libvirt_hypervisor"] == hosts[2] and off["libvirt_state"] == "shut_off"
        assert off["ansible_connection"] == "lockstep.virt.guest_agent"
        assert names["off"] in listed["libvirt_hypervisor_" + hosts[2]]["hosts"]
        assert names["off"] in listed["libvirt_state_shut_off"]["hosts"]
        assert os.listdir(os.path.join(tmp, "cache")), "the listing was not cached"

        # the guest reached through the inventory: its agent, over its hypervisor's SSH (ansible_host unused)
        res = run(lab, ["ansible", "-i", config, names["agent"], "-m", "ansible.builtin.command", "-a",
                        "cat /etc/hostname"])  # fmt: skip
        assert res.returncode == 0 and "lockstep-guest" in res.stdout, res.stdout + res.stderr

        # a valid cache answers without the hypervisors: the bare guest, gone, is still listed ...
        lab.cleanup_domain(names["bare"])
        listed = inventory_of(lab, config)
        assert names["bare"] in listed["_meta"]["hostvars"]
        # ... until the cache is flushed
        res = run(lab, ["ansible-inventory", "-i", config, "--list", "--flush-cache"])
        assert res.returncode == 0, res.stderr
        listed = inventory_of(lab, config)
        assert sorted(listed["_meta"]["hostvars"]) == sorted([names["agent"], names["off"]])
