"""Integration fixtures: the lab's real hypervisor hosts (see labkit)."""

import json
import os
import shutil
import subprocess
import uuid

import pytest
from labkit import LAB, SHARED_POOLS, Lab, lab_state, linux_image

_LAB_LOCK_MANAGER = []


def lab_lock_manager():
    """The lock manager the running lab was brought up with (``lab up --lock-manager``), None when it is down."""
    if not _LAB_LOCK_MANAGER:
        try:
            _LAB_LOCK_MANAGER.append(lab_state().get("lock_manager", "lockd"))
        except (OSError, ValueError):
            _LAB_LOCK_MANAGER.append(None)
    return _LAB_LOCK_MANAGER[0]


@pytest.fixture(autouse=True)
def _lab_runs_the_lock_manager_the_test_expects(request):
    """A test using the lab expects its module's ``LAB_LOCK_MANAGER`` (virtlockd unless it says otherwise): on
    a lab brought up with another lock manager it is skipped, with the reason."""
    if "lab" not in request.fixturenames:
        return
    wanted = getattr(request.module, "LAB_LOCK_MANAGER", "lockd")
    running = lab_lock_manager()
    if running is not None and running != wanted:
        pytest.skip("expects a lab with lock manager {}; this lab runs {}".format(wanted, running))


@pytest.fixture(scope="session")
def lab():
    res = subprocess.run([LAB, "status", "--json"], capture_output=True, text=True, check=False)
    status = json.loads(res.stdout) if res.stdout.strip() else {"up": False}
    if not status.get("up"):
        pytest.fail("the lab is not up: run `tests/lab/lab up` (make test does)", pytrace=False)
    return Lab(status)


@pytest.fixture(scope="session")
def lab_image():
    """The lab's Linux guest image, built or checked once before any test boots it."""
    try:
        return linux_image()
    except SystemExit as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def guest_name(lab):
    """A fresh guest name, removed from every host afterwards."""
    name = "it-" + uuid.uuid4().hex[:8]
    yield name
    lab.cleanup_domain(name)


@pytest.fixture
def two_guests(lab, guest_name):
    names = [guest_name + "-a", guest_name + "-b"]
    guests = []
    for name in names:
        disk = lab.new_disk(name)
        spec = {
            "type": "qemu",
            "memory": 32,
            "boot": ["hd"],
            "disks": [{"path": disk, "format": "qcow2", "cache": "none"}],
            "lease": {},
        }
        guests.append({"name": name, "state": "running", "spec": spec})
    yield guests
    for name in names:
        lab.cleanup_domain(name)
        os.unlink(os.path.join(lab.images_dir, name + ".qcow2"))


@pytest.fixture
def active_pool(lab):
    """A running dir pool on the shared storage, defined on hv1; removed with its volumes afterwards."""
    name = "it-" + uuid.uuid4().hex[:8]
    path = os.path.join(SHARED_POOLS, name)
    r = lab.module(lab.hosts[0], "lockstep.virt.pool", {"name": name, "state": "active", "spec": {"path": path}})
    assert r["changed"], r
    yield {"name": name, "path": path}
    host = lab.hosts[0]
    lab.virsh(host, "pool-destroy", name, check=False)
    lab.virsh(host, "pool-undefine", name, check=False)
    shutil.rmtree(path, ignore_errors=True)
