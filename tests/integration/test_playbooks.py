"""The playbooks the collection ships, run as a user runs them: normal and check mode."""

import hashlib
import os
import random
import shutil
import uuid

import pytest
import yaml
from labkit import REPO, lock_holder

PLAYBOOKS = os.path.join(REPO, "playbooks")
DEMO = os.path.join(PLAYBOOKS, "demo.yml")
SITE = os.path.join(PLAYBOOKS, "site.yml")
EVACUATE = os.path.join(PLAYBOOKS, "evacuate.yml")
EXAMPLE_INVENTORY = os.path.join(REPO, "docs", "examples", "inventory")

MIGRATE_TASK = "Live-migrate it, the destination taking the leases only once the guest has arrived"
MOVE_TASK = "Move the guests, each with a verified lease handoff, a bounded number at a time"


def migration(run):
    """The migrate task's result on the host it ran on (it is skipped on the others)."""
    [ran] = [r for r in run.results if r["task"] == MIGRATE_TASK and r["status"] != "skipped"]
    return ran["host"], ran["result"]


def evacuation(run):
    """The evacuate role's move task on the host it ran on."""
    [ran] = [r for r in run.results if r["task"].endswith(" : " + MOVE_TASK) and r["status"] != "skipped"]
    return ran["host"], ran["result"]


def running_on(lab, name):
    return [h for h in lab.hosts if lab.domain_state(h, name) == "running"]


def changed(run):
    return [r["task"] for r in run.results if r["result"].get("changed")]


@pytest.fixture
def demo_names(lab):
    """The demo's objects under this run's own names (the user's demo, if any, is left alone); removed
    afterwards from every host, with the guest's lease files."""
    suffix = uuid.uuid4().hex[:6]
    names = {
        "demo_guest": "itd-" + suffix,
        "demo_pool": "itd-" + suffix,
        "demo_network": "itd-" + suffix,
        "demo_bridge": "itdb" + suffix,
        "demo_subnet": "10.80.{}".format(random.randint(20, 249)),
    }
    yield names
    guest, pool = names["demo_guest"], names["demo_pool"]
    leases = []
    for host in lab.hosts:
        dom_uuid = lab.virsh(host, "domuuid", guest, check=False).stdout.strip()
        if dom_uuid:
            leases.append(os.path.join(lab.lockspace_dir, dom_uuid))
    lab.cleanup_domain(guest)
    pool_dir = os.path.join(lab.shared_dir, "pools", pool)
    leases.append(
        os.path.join(lab.lockspace_dir, hashlib.sha256(os.path.join(pool_dir, guest + ".qcow2").encode()).hexdigest())
    )
    for host in lab.hosts:
        lab.virsh(host, "pool-destroy", pool, check=False)
        lab.virsh(host, "pool-undefine", pool, check=False)
        lab.virsh(host, "net-destroy", names["demo_network"], check=False)
        lab.virsh(host, "net-undefine", names["demo_network"], check=False)
    shutil.rmtree(pool_dir, ignore_errors=True)
    for path in leases:
        if os.path.exists(path) and lock_holder(path) is None:
            os.unlink(path)


def others_on(lab, names):
    """Every guest, network and pool of the lab's hosts that is not this run's demo: the demo run leaves
    each as it was (a user's own demo among them)."""
    ours = {names["demo_guest"], names["demo_pool"], names["demo_network"]}
    out = {}
    for host in lab.hosts:
        for kind, listing in (("domain", "list"), ("network", "net-list"), ("pool", "pool-list")):
            for name in lab.virsh(host, listing, "--all", "--name").stdout.split():
                if name not in ours:
                    state = lab.domain_state(host, name) if kind == "domain" else None
                    out["{} {} {}".format(host, kind, name)] = state
    return out


def test_demo_migrates_evacuates_and_converges_again_without_change_and_check_mode_changes_nothing(lab, demo_names):
    name = demo_names["demo_guest"]
    others = others_on(lab, demo_names)
    first = lab.playbook(DEMO, extra_vars=demo_names)
    assert first.rc == 0, first.stdout[-4000:]
    home, moved = migration(first)
    assert moved["changed"] is True
    dest = moved["dest"]
    drained, report = evacuation(first)
    assert drained == dest
    [guest] = report["guests"]
    assert guest["name"] == name and guest["state"] == "moved" and guest["dest"] != dest
    assert running_on(lab, name) == [guest["dest"]] == guest["runs_on"]
    if len(lab.hosts) == 2:
        assert guest["dest"] == home
    resources = [lease["resource"] for lease in moved["leases"]]
    assert resources and all(lock_holder(r) == lab.virtlockd_pid(guest["dest"]) for r in resources)
    second = [r for r in first.results if r["task"] == "Nothing changed on the second converge"]
    assert len(second) == len(lab.hosts) and all(r["status"] == "ok" for r in second)
    assert all(r["result"]["msg"].endswith("changed=0") for r in second)

    check_run = lab.playbook(DEMO, check=True, diff=True, extra_vars=demo_names)
    assert check_run.rc == 0, check_run.stdout[-4000:]
    assert running_on(lab, name) == [guest["dest"]]
    assert all(lock_holder(r) == lab.virtlockd_pid(guest["dest"]) for r in resources)
    # only the migration would change anything: pool, network, volume and guest are in place, and the
    # host it would go to runs no demo guest to evacuate
    assert changed(check_run) == [MIGRATE_TASK]
    assert others_on(lab, demo_names) == others


@pytest.fixture
def site_inventory(lab, tmp_path):
    """The example inventory's group and host variables beside the lab's hosts."""
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    shutil.copy(lab.inventory, inventory / "hosts.yml")
    for part in ("group_vars", "host_vars"):
        shutil.copytree(os.path.join(EXAMPLE_INVENTORY, part), inventory / part)
    guests = {}
    for host in lab.hosts:
        path = os.path.join(EXAMPLE_INVENTORY, "host_vars", host + ".yml")
        if os.path.exists(path):
            with open(path) as fh:
                guests[host] = [g["name"] for g in yaml.safe_load(fh)["guests_list"]]
    yield str(inventory), guests
    for names in guests.values():
        for name in names:
            lab.cleanup_domain(name)


def test_site_sets_up_the_hypervisors_and_starts_their_guests_once_check_mode_first(lab, site_inventory):
    inventory, guests = site_inventory
    assert guests and sum(len(n) for n in guests.values()) >= 2
    lab_inventory = lab.inventory
    lab.inventory = inventory
    # lab specifics over the example's group variables: its lockspace, and nothing to install or restart
    lab_vars = {
        "hypervisor_lockspace_dir": lab.lockspace_dir,
        "hypervisor_install_packages": False,
        "hypervisor_restart_services": False,
    }
    try:
        check = lab.playbook(SITE, check=True, diff=True, extra_vars=lab_vars)
        assert check.rc == 0, check.stdout[-4000:]
        assert set(r["host"] for r in check.results if r["result"].get("changed")) == set(guests)
        assert all(lab.domain_state(h, n) is None for h, names in guests.items() for n in names)

        first = lab.playbook(SITE, extra_vars=lab_vars)
        assert first.rc == 0, first.stdout[-4000:]
        for host, names in guests.items():
            for name in names:
                assert running_on(lab, name) == [host]
            held = lab.module(host, "lockstep.virt.lease_info", {"names": names})["guests"]
            assert all(lease["held_here"] for g in held for lease in g["leases"]) and held, held
        started = [r for r in first.results if r["task"].endswith("Bring each guest to its declared state")]
        assert all(r["result"]["changed"] for r in started if r["host"] in guests)

        for check_mode in (False, True):
            again = lab.playbook(SITE, check=check_mode, diff=check_mode, extra_vars=lab_vars)
            assert again.rc == 0, again.stdout[-4000:]
            assert changed(again) == []
    finally:
        lab.inventory = lab_inventory


def test_evacuate_playbook_drains_a_host_to_the_others_of_the_group(lab, two_guests):
    hv1 = lab.hosts[0]
    start = lab.playbook(
        [
            {
                "hosts": hv1,
                "gather_facts": False,
                "roles": [{"role": "lockstep.virt.guests", "vars": {"guests_list": two_guests}}],
            }
        ]
    )
    assert start.rc == 0, start.stdout[-3000:]
    names = [g["name"] for g in two_guests]
    extra = {"evacuate_host": hv1, "evacuate_unsafe": True, "evacuate_pattern": names[0][:-2] + "-*"}

    check = lab.playbook(EVACUATE, check=True, extra_vars=extra)
    assert check.rc == 0, check.stdout[-3000:]
    _host, plan = evacuation(check)
    assert sorted(d["name"] for d in plan["destinations"]) == sorted(lab.hosts[1:])
    assert [g["state"] for g in plan["guests"]] == ["would_move", "would_move"]
    assert all(running_on(lab, n) == [hv1] for n in names)

    run = lab.playbook(EVACUATE, extra_vars=extra)
    assert run.rc == 0, run.stdout[-3000:]
    for name in names:
        [there] = running_on(lab, name)
        assert there in lab.hosts[1:]
        leases = lab.module(there, "lockstep.virt.lease_info", {"name": name})["guests"][0]["leases"]
        assert leases and all(lease["held_here"] for lease in leases), leases

    for check_mode in (False, True):
        again = lab.playbook(EVACUATE, check=check_mode, extra_vars=extra)
        assert again.rc == 0
        assert changed(again) == []


def test_evacuate_playbook_needs_a_host(lab):
    run = lab.playbook(EVACUATE)
    assert run.rc != 0
    assert "give the hypervisor to evacuate" in run.task("The host to evacuate is one of the group")["msg"]
