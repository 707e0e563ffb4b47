"""An interrupted lockstep.virt.migrate, re-run: the same task converges without manual clean-up.

The 128 MiB Linux lab guest (a disk lease and a VM lease) is migrated hv1 -> hv2 with ``bandwidth: 2``
(MiB/s), so the transfer lasts long enough to interrupt it at a chosen point:

- before the send (the module killed as soon as its process appears),
- during the transfer (the module SIGKILLed while the job runs; libvirtd goes on peer-to-peer),
- after the transfer, before the destination is resumed (the module stopped with SIGSTOP while the job runs,
  killed once the guest is paused on hv2 and gone from hv1),
- during the resume (stopped as soon as hv2 runs the guest, before the module has finished),
- the controller: ansible-playbook SIGKILLed mid-migration.

Each is followed by the same task again, which must report ``changed=true`` and leave the guest running on
hv2 holding both leases, or, when the interrupted run had already finished, changed only for what it
cleaned up. The module is found by its pid in hv1's namespaces and signalled by that pid.
"""

import json
import os
import signal
import subprocess
import tempfile
import time

import pytest
import yaml
from labkit import REPO
from migrate_helpers import LinuxGuest, assert_runs_only_on, failed, migrate, names

DEST = "qemu+ssh://hv2/system"
TASK = {"name": None, "dest_uri": DEST, "unsafe": True, "bandwidth": 2}


@pytest.fixture
def guest(lab, guest_name):
    g = LinuxGuest(lab, guest_name, "hv1")
    yield g
    g.remove()


def start_migrate(lab, guest):
    """ansible-playbook running the migrate task, in the background; returns (Popen, tmpdir)."""
    tmp = tempfile.mkdtemp(prefix="lab-kill-")
    play = [
        {
            "hosts": "hv1",
            "gather_facts": False,
            "tasks": [{"name": "under test", "lockstep.virt.migrate": dict(TASK, name=guest.name)}],
        }
    ]
    path = os.path.join(tmp, "play.yml")
    with open(path, "w") as fh:
        yaml.safe_dump(play, fh, sort_keys=False)
    env = lab._env(os.path.join(tmp, "record.jsonl"))
    # no pipelining and a remote tmp of our own: the module's command line names a path only this run uses,
    # so its pid is found without matching anyone else's process (the lab hosts share the pid namespace)
    remote_tmp = "/tmp/lockstep-kill-{}-{}".format(os.getpid(), os.path.basename(tmp))
    env.update({"ANSIBLE_PIPELINING": "False", "ANSIBLE_REMOTE_TMP": remote_tmp})
    proc = subprocess.Popen(
        ["ansible-playbook", "-i", lab.inventory, path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )
    proc.remote_tmp = remote_tmp
    return proc, tmp


def module_pid(lab, proc, timeout=60):
    """The pid of this run's migrate module process on hv1 (its command line holds our remote tmp path)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = lab.exec("hv1", "pgrep", "-f", proc.remote_tmp + r".*AnsiballZ_migrate\.py", check=False)
        for pid in res.stdout.split():
            comm = lab.exec("hv1", "cat", "/proc/{}/comm".format(pid), check=False).stdout.strip()
            if comm.startswith("python"):  # not the sh -c that started it
                return pid
        time.sleep(0.05)
    raise AssertionError("the migrate module never started on hv1")


def signal_module(lab, pid, sig):
    lab.exec("hv1", "kill", "-{}".format(sig), pid, check=False)


def job_running(lab, guest):
    res = lab.virsh("hv1", "domjobinfo", guest.name, check=False)
    return res.returncode == 0 and "Job type:" in res.stdout and "None" not in res.stdout.split("Job type:")[1][:20]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def rerun(lab, guest):
    res = migrate(lab, "hv1", "hv2", guest.name, bandwidth=2)
    assert not failed(res), res.get("msg")
    assert res["state"] == "running"
    assert_runs_only_on(lab, guest, "hv2", "hv1")
    return res


def finish(proc):
    proc.wait(timeout=600)


def test_module_killed_before_the_send(lab, guest):
    proc, _tmp = start_migrate(lab, guest)
    pid = module_pid(lab, proc)
    signal_module(lab, pid, "KILL")
    finish(proc)
    res = rerun(lab, guest)
    # whatever the killed run did, the guest was not on hv2 yet or ran nowhere: the re-run changed it
    assert res["changed"] is True
    again = migrate(lab, "hv1", "hv2", guest.name, bandwidth=2)
    assert again["changed"] is False


def test_module_killed_during_the_transfer(lab, guest):
    proc, _tmp = start_migrate(lab, guest)
    pid = module_pid(lab, proc)
    wait_for(lambda: job_running(lab, guest), 60, "the migration job")
    time.sleep(3)
    signal_module(lab, pid, "KILL")
    finish(proc)
    res = rerun(lab, guest)
    assert res["changed"] is True
    seq = names(res)
    assert seq[0] == "reconcile/inquire", seq
    assert "reconcile/resumed" in seq and "reconcile/dest_acquired" in seq
    cps = {c["name"]: c for c in res["lock_checkpoints"]}
    assert cps["reconcile/dest_acquired"]["verified"] is True
    assert [x["holder_pid"] for x in cps["reconcile/dest_acquired"]["leases"]] == [lab.virtlockd_pid("hv2")] * 2


def test_module_killed_after_the_transfer_before_the_resume(lab, guest):
    proc, _tmp = start_migrate(lab, guest)
    pid = module_pid(lab, proc)
    wait_for(lambda: job_running(lab, guest), 60, "the migration job")
    signal_module(lab, pid, "STOP")
    try:
        wait_for(
            lambda: lab.domain_state("hv2", guest.name) == "paused" and lab.domain_state("hv1", guest.name) is None,
            300,
            "libvirt to finish the transfer on its own",
        )
        # the guest runs nowhere and nobody holds its leases
        assert guest.holders() == [None, None]
        info = lab.module("hv2", "lockstep.virt.lease_info", {"names": [guest.name]})
        handoff = info["guests"][0]["migration_handoff"]
        assert info["guests"][0]["state"] == "paused" and handoff["pending"] is True, info["guests"]
    finally:
        signal_module(lab, pid, "KILL")
        signal_module(lab, pid, "CONT")
    finish(proc)
    res = rerun(lab, guest)
    assert res["changed"] is True
    assert names(res) == [
        "reconcile/inquire",
        "reconcile/source_released",
        "reconcile/dest_acquired",
        "reconcile/resumed",
    ]
    assert migrate(lab, "hv1", "hv2", guest.name, bandwidth=2)["changed"] is False


def test_module_killed_during_the_resume(lab, guest):
    proc, _tmp = start_migrate(lab, guest)
    pid = module_pid(lab, proc)
    wait_for(lambda: lab.domain_state("hv2", guest.name) == "running", 300, "the guest to run on hv2")
    signal_module(lab, pid, "KILL")
    finish(proc)
    res = rerun(lab, guest)
    # either the killed run had cleared the handoff marker (nothing left: unchanged) or the re-run clears it
    if res["changed"]:
        assert "reconcile/marker_cleared" in names(res)
    assert migrate(lab, "hv1", "hv2", guest.name, bandwidth=2)["changed"] is False


def test_controller_killed_mid_migration(lab, guest):
    proc, _tmp = start_migrate(lab, guest)
    module_pid(lab, proc)
    wait_for(lambda: job_running(lab, guest), 60, "the migration job")
    time.sleep(2)
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    res = rerun(lab, guest)
    # the module on hv1 may have survived the lost controller and finished the handoff itself
    assert res["changed"] is True or names(res) == ["begin/inquire"]
    if not res["changed"]:
        assert json.dumps(res["lock_checkpoints"]).count("reconcile/") == 0
