"""Reaching the lab's Linux guest through its QEMU guest agent: boot it, ping it, run Ansible against it, read
an inventory; shared by the guest agent and inventory tests."""

import json
import os
import subprocess
import sys
import time

import libvirt
from labkit import LAB_ROOT, REPO, define

sys.path.insert(0, os.path.join(REPO, "tests", "lab"))
import guest_image

KEY = os.path.join(LAB_ROOT, "ssh", "id_ed25519")


KNOWN_HOSTS = os.path.join(LAB_ROOT, "ssh", "known_hosts")


BOOT_TIMEOUT = 90


def agent_ping(lab, host, name):
    try:
        lab.agent(host, name, {"execute": "guest-ping"}, timeout=5)
    except libvirt.libvirtError:
        return False
    return True


def boot_guest(lab, host, name):
    """Define and start a guest of the lab image on host; return seconds from start to the agent's answer."""
    define(lab, host, guest_image.domain_xml(name))
    started = time.monotonic()
    lab.virsh(host, "start", name)
    while time.monotonic() - started < BOOT_TIMEOUT:
        if agent_ping(lab, host, name):
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError("guest {} did not answer guest-ping within {}s".format(name, BOOT_TIMEOUT))


def run(lab, argv, record=None, timeout=900):
    env = lab._env(record or os.devnull)
    env["ANSIBLE_HOST_KEY_CHECKING"] = "True"
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout, check=False)


def plain(value):
    """ansible-inventory --list marks strings from inventory plugins as {"__ansible_unsafe": ...}."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def inventory_of(lab, config):
    res = run(lab, ["ansible-inventory", "-i", config, "--list"])
    assert res.returncode == 0, res.stderr
    return plain(json.loads(res.stdout))


def agent_exec(lab, host, name, command):
    """Run ``command`` with /bin/sh in the guest through its agent (guest-exec), waiting for it to exit 0."""
    started = lab.agent(host, name, {"execute": "guest-exec", "arguments": {"path": "/bin/sh", "arg": ["-c", command]}})
    for _attempt in range(50):
        status = lab.agent(host, name, {"execute": "guest-exec-status", "arguments": {"pid": started["pid"]}})
        if status.get("exited"):
            assert status.get("exitcode") == 0, status
            return
        time.sleep(0.2)
    raise AssertionError("{!r} did not finish in the guest".format(command))
