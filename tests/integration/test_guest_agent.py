"""lockstep.virt.guest_agent and lockstep.virt.libvirt on the lab, with a real guest of the lab image.

The guest (tests/lab/guest_image.py: Debian kernel, busybox, qemu-ga, Python) boots under software
emulation with 128 MiB; Ansible reaches it only through hv1's SSH and the guest agent.
"""

import hashlib
import json
import os
import sys
import tempfile
import time
import uuid

import pytest
import yaml
from agent_helpers import KEY, KNOWN_HOSTS, agent_ping, boot_guest, inventory_of, run
from labkit import REPO, PlaybookRun

sys.path.insert(0, os.path.join(REPO, "tests", "lab"))


def guest_vars(host_address, **extra):
    values = {
        "ansible_connection": "lockstep.virt.guest_agent",
        "ansible_python_interpreter": "/usr/bin/python3",
        "guest_agent_hypervisor_host": host_address,
        "guest_agent_hypervisor_private_key_file": KEY,
        "guest_agent_known_hosts_file": KNOWN_HOSTS,
        "guest_agent_command_timeout": 240,
    }
    values.update(extra)
    return values


def write_inventory(path, name, variables):
    with open(path, "w") as fh:
        yaml.safe_dump({"guests": {"hosts": {name: None}, "vars": variables}}, fh)
    return path


def playbook(lab, inventory, plays):
    with tempfile.TemporaryDirectory(prefix="ga-play-") as tmp:
        path = os.path.join(tmp, "play.yml")
        with open(path, "w") as fh:
            yaml.safe_dump(plays, fh, sort_keys=False)
        record = os.path.join(tmp, "record.jsonl")
        res = run(lab, ["ansible-playbook", "-i", inventory, path], record=record)
        results = []
        if os.path.exists(record):
            with open(record) as fh:
                results = [json.loads(line) for line in fh]
    return PlaybookRun(res.returncode, res.stdout, res.stderr, results)


@pytest.fixture(scope="module")
def guest(lab, lab_image):
    name = "ga-" + uuid.uuid4().hex[:8]
    try:
        seconds = boot_guest(lab, "hv1", name)
        print("guest {} answered the agent {:.1f}s after start".format(name, seconds))
        yield name
    finally:
        lab.cleanup_domain(name)


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="ga-test-") as tmp:
        yield tmp


def test_image_fits_and_boots(lab_image, guest, lab):
    assert lab_image["initrd_unpacked_bytes"] < 64 * 2**20
    assert lab_image["memory_mib"] == 128
    xml = lab.virsh("hv1", "dumpxml", guest).stdout
    assert "<memory unit='KiB'>131072</memory>" in xml and "org.qemu.guest_agent.0" in xml
    assert "type='qemu'" in xml


def test_modules_through_the_agent(lab, guest, workdir):
    inv = write_inventory(os.path.join(workdir, "guest.yml"), guest, guest_vars(lab.address("hv1")))
    payload = os.path.join(workdir, "payload.bin")
    with open(payload, "wb") as fh:
        fh.write(os.urandom(1024 * 1024))
    with open(payload, "rb") as fh:
        digest = hashlib.sha1(fh.read()).hexdigest()
    fetched = os.path.join(workdir, "fetched")
    plays = [
        {
            "hosts": guest,
            "gather_facts": False,
            "tasks": [
                {"name": "ping", "ansible.builtin.ping": {}},
                {"name": "command", "ansible.builtin.command": {"argv": ["uname", "-r"]}},
                {"name": "shell pipe", "ansible.builtin.shell": "echo alpha beta gamma | tr ' ' '\\n' | grep -c a"},
                {"name": "copy", "ansible.builtin.copy": {"src": payload, "dest": "/root/payload.bin"}},
                {"name": "stat", "ansible.builtin.stat": {"path": "/root/payload.bin", "checksum_algorithm": "sha1"}},
                {"name": "fetch", "ansible.builtin.fetch": {"src": "/root/payload.bin", "dest": fetched + "/"}},
                {"name": "failing", "ansible.builtin.command": "sh -c 'echo out; echo err >&2; exit 3'",
                 "ignore_errors": True},  # fmt: skip
                {"name": "unpipelined", "ansible.builtin.command": "cat /proc/loadavg",
                 "vars": {"ansible_pipelining": False}},
                {"name": "unpipelined ping", "ansible.builtin.ping": {"data": "slow"},
                 "vars": {"ansible_pipelining": False}},
                {"name": "whoami", "ansible.builtin.command": "id -u"},
            ],
        }
    ]  # fmt: skip
    started = time.monotonic()
    res = playbook(lab, inv, plays)
    print("play of {} tasks: {:.1f}s".format(len(plays[0]["tasks"]), time.monotonic() - started))
    assert res.task("ping")["ping"] == "pong", res.stdout
    assert res.task("command")["stdout"].endswith("cloud-amd64")
    assert res.task("shell pipe")["stdout"] == "3"
    copy = res.task("copy")
    assert copy.get("changed") and copy["checksum"] == digest
    assert res.task("stat")["stat"]["checksum"] == digest and res.task("stat")["stat"]["size"] == 1024 * 1024
    local = os.path.join(fetched, guest, "root", "payload.bin")
    with open(local, "rb") as fh:
        assert hashlib.sha1(fh.read()).hexdigest() == digest
    entry = next(r for r in res.results if r["task"] == "failing")
    assert entry["status"] == "failed", entry
    failing = entry["result"]
    assert failing["rc"] == 3
    assert failing["stdout"] == "out" and failing["stderr"] == "err"
    assert not failing.get("unreachable")
    assert res.task("unpipelined")["rc"] == 0
    assert res.task("unpipelined ping")["ping"] == "slow"
    assert res.task("whoami")["stdout"] == "0"
    assert res.rc == 0, res.stdout + res.stderr


def test_pipelining_uses_stdin_not_files(lab, guest, workdir):
    inv = write_inventory(
        os.path.join(workdir, "pipelined.yml"), guest, guest_vars(lab.address("hv1"), ansible_pipelining=True)
    )
    res = run(lab, ["ansible", "-i", inv, guest, "-m", "ansible.builtin.ping", "-vvv"])
    assert res.returncode == 0 and '"ping": "pong"' in res.stdout, res.stdout + res.stderr
    assert "PUT " not in res.stdout  # the module went through input-data / a staged stdin, not put_file
    inv = write_inventory(
        os.path.join(workdir, "unpipelined.yml"), guest, guest_vars(lab.address("hv1"), ansible_pipelining=False)
    )
    res = run(lab, ["ansible", "-i", inv, guest, "-m", "ansible.builtin.ping", "-vvv"])
    assert res.returncode == 0 and '"ping": "pong"' in res.stdout, res.stdout + res.stderr
    assert "PUT " in res.stdout


def test_wrong_host_key_is_refused(lab, guest, workdir):
    with open(KNOWN_HOSTS) as fh:
        lines = [line.split() for line in fh if line.strip() and not line.startswith("#")]
    hv1, hv2 = lab.address("hv1"), lab.address("hv2")
    other = next(p for p in lines if hv2 in p[0].split(","))
    wrong = os.path.join(workdir, "wrong_known_hosts")
    with open(wrong, "w") as fh:
        fh.write("{} {} {}\n".format(hv1, other[1], other[2]))
    inv = write_inventory(
        os.path.join(workdir, "wrong.yml"), guest, guest_vars(hv1, guest_agent_known_hosts_file=wrong)
    )
    res = run(lab, ["ansible", "-i", inv, guest, "-m", "ansible.builtin.ping"])
    assert res.returncode != 0
    assert "UNREACHABLE" in res.stdout and "does not match" in res.stdout, res.stdout
    # an unknown key is refused too, unless checking is turned off explicitly
    empty = os.path.join(workdir, "empty_known_hosts")
    open(empty, "w").close()
    inv = write_inventory(
        os.path.join(workdir, "unknown.yml"), guest, guest_vars(hv1, guest_agent_known_hosts_file=empty)
    )
    res = run(lab, ["ansible", "-i", inv, guest, "-m", "ansible.builtin.command", "-a", "true"])
    assert "UNREACHABLE" in res.stdout and "is unknown" in res.stdout, res.stdout
    inv = write_inventory(
        os.path.join(workdir, "lax.yml"),
        guest,
        guest_vars(hv1, guest_agent_known_hosts_file=empty, guest_agent_host_key_checking=False),
    )
    res = run(lab, ["ansible", "-i", inv, guest, "-m", "ansible.builtin.command", "-a", "true"])
    assert res.returncode == 0, res.stdout


def test_stopped_agent_fails_clearly_and_fast(lab, lab_image, guest_name, workdir):
    boot_guest(lab, "hv2", guest_name)
    stop = {
        "execute": "guest-exec",
        "arguments": {"path": "/bin/sh", "arg": ["-c", "touch /run/qemu-ga.hold; killall qemu-ga"]},
    }
    lab.virsh("hv2", "qemu-agent-command", guest_name, json.dumps(stop))
    deadline = time.monotonic() + 30
    while agent_ping(lab, "hv2", guest_name) and time.monotonic() < deadline:
        time.sleep(0.5)
    inv = write_inventory(
        os.path.join(workdir, "stopped.yml"),
        guest_name,
        guest_vars(lab.address("hv2"), guest_agent_connect_timeout=5, guest_agent_command_timeout=20),
    )
    started = time.monotonic()
    res = run(lab, ["ansible", "-i", inv, guest_name, "-m", "ansible.builtin.ping"])
    elapsed = time.monotonic() - started
    assert res.returncode != 0 and "UNREACHABLE" in res.stdout, res.stdout
    assert "guest agent" in res.stdout and ("not connected" in res.stdout or "did not answer" in res.stdout)
    assert elapsed < 60, elapsed


def lab_config(lab, workdir, name):
    path = os.path.join(workdir, "lab_guests.libvirt.yml")
    config = {
        "plugin": "lockstep.virt.libvirt",
        "hypervisors": [{"name": h, "host": lab.address(h)} for h in lab.hosts],
        "private_key_file": KEY,
        "known_hosts_file": KNOWN_HOSTS,
        "name_patterns": ["^{}$".format(name)],
        "compose": {"ansible_python_interpreter": "'/usr/bin/python3'", "guest_agent_command_timeout": 240},
        "keyed_groups": [{"key": "libvirt_agent_state | default('none')", "prefix": "agent"}],
    }
    with open(path, "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    return path


def test_inventory_finds_guest_and_follows_migration(lab, guest, workdir):
    config = lab_config(lab, workdir, guest)
    listed = inventory_of(lab, config)
    hostvars = listed["_meta"]["hostvars"][guest]
    assert hostvars["libvirt_hypervisor"] == "hv1"
    assert hostvars["ansible_connection"] == "lockstep.virt.guest_agent"
    assert guest in listed["libvirt_state_running"]["hosts"]
    assert guest in listed["libvirt_hypervisor_hv1"]["hosts"]
    assert guest in listed["agent_connected"]["hosts"]
    res = run(lab, ["ansible", "-i", config, "all", "-m", "ansible.builtin.ping"])
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr

    for _attempt in range(3):  # the lab is shared: another migration may hold the destination's port a moment
        res = lab.exec(
            "hv1",
            "virsh", "-c", "qemu:///system", "migrate", "--live", "--p2p", "--unsafe", "--persistent",
            "--undefinesource", guest, "qemu+ssh://hv2/system",
            timeout=300, check=False,
        )  # fmt: skip
        if res.returncode == 0 or lab.domain_state("hv2", guest) == "running":
            break
        time.sleep(3)
    assert res.returncode == 0, res.stderr
    started = time.monotonic()
    while not agent_ping(lab, "hv2", guest):
        assert time.monotonic() - started < 30, "agent silent after migration"
        time.sleep(0.25)
    listed = inventory_of(lab, config)
    assert listed["_meta"]["hostvars"][guest]["libvirt_hypervisor"] == "hv2"
    assert listed["_meta"]["hostvars"][guest]["guest_agent_hypervisor_host"] == lab.address("hv2")
    assert guest in listed["libvirt_hypervisor_hv2"]["hosts"]
    res = run(lab, ["ansible", "-i", config, "all", "-m", "ansible.builtin.command", "-a", "cat /etc/hostname"])
    assert res.returncode == 0 and "lockstep-guest" in res.stdout, res.stdout + res.stderr
