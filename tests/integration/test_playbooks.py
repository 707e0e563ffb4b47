"""The playbooks the collection ships, run as a user runs them."""

import os

from labkit import REPO, lock_holder

DEMO = os.path.join(REPO, "playbooks", "demo.yml")


MIGRATE_TASK = "Live-migrate it, the destination taking the leases only once the guest has arrived"


def migration(run):
    """The migrate task's result on the host it ran on (it is skipped on the others)."""
    [ran] = [r for r in run.results if r["task"] == MIGRATE_TASK and r["status"] != "skipped"]
    return ran["host"], ran["result"]


def running_on(lab, name):
    return [h for h in lab.hosts if lab.domain_state(h, name) == "running"]


def test_demo_moves_its_guest_each_run_and_check_mode_changes_nothing(lab):
    first = lab.playbook(DEMO)
    assert first.rc == 0, first.stdout[-4000:]
    home, moved = migration(first)
    assert moved["changed"] is True
    dest = moved["dest"]
    assert running_on(lab, "demo1") == [dest]
    resources = [lease["resource"] for lease in moved["leases"]]
    assert resources and all(lock_holder(r) == lab.virtlockd_pid(dest) for r in resources)

    check_run = lab.playbook(DEMO, check=True, diff=True)
    assert check_run.rc == 0, check_run.stdout[-4000:]
    assert running_on(lab, "demo1") == [dest]
    assert all(lock_holder(r) == lab.virtlockd_pid(dest) for r in resources)
    # only the migration would change anything: pool, network, volume and guest are in place
    changed = [r["task"] for r in check_run.results if r["result"].get("changed")]
    assert changed == [MIGRATE_TASK]

    back = lab.playbook(DEMO)
    assert back.rc == 0, back.stdout[-4000:]
    assert migration(back)[0] == dest
    assert running_on(lab, "demo1") == [home]
    assert all(lock_holder(r) == lab.virtlockd_pid(home) for r in resources)
