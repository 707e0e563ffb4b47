"""The roles on the lab's real hosts: hypervisor, guests, evacuate."""

import os

import pytest
from labkit import lock_holder


def role_play(hosts, role, role_vars):
    return [{"hosts": hosts, "gather_facts": False, "roles": [{"role": role, "vars": role_vars}]}]


def changed_tasks(run, host):
    """Names of the tasks that changed something, without their "<role> : " prefix."""
    return [r["task"].split(" : ", 1)[-1] for r in run.for_host(host) if r["result"].get("changed")]


def test_hypervisor_role_finds_the_lab_configured_and_changes_nothing(lab):
    role_vars = {"hypervisor_lockspace_dir": lab.lockspace_dir, "hypervisor_restart_services": False}
    for check in (False, True):
        run = lab.playbook(role_play("hypervisors", "lockstep.virt.hypervisor", role_vars), check=check, diff=True)
        assert run.rc == 0, run.stdout[-3000:]
        for host in lab.hosts:
            assert changed_tasks(run, host) == []
            assert run.task("Read the lock manager now in force", host)["lock_manager"]["enabled"] is True


def test_hypervisor_role_check_mode_predicts_a_lockspace_change_without_making_it(lab):
    before = lab.exec(lab.hosts[0], "cat", "/etc/libvirt/qemu-lockd.conf").stdout
    role_vars = {"hypervisor_lockspace_dir": "/srv/elsewhere/lockd", "hypervisor_restart_services": False}
    run = lab.playbook(role_play(lab.hosts[0], "lockstep.virt.hypervisor", role_vars), check=True, diff=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert changed_tasks(run, lab.hosts[0]) == ["The lockspace directory", "Configure virtlockd's leases"]
    assert lab.exec(lab.hosts[0], "cat", "/etc/libvirt/qemu-lockd.conf").stdout == before
    assert lab.exec(lab.hosts[0], "test", "-e", "/srv/elsewhere", check=False).returncode != 0


def test_guests_role_starts_every_guest_once_and_then_changes_nothing(lab, two_guests):
    hv1 = lab.hosts[0]
    role_vars = {"guests_list": two_guests, "guests_lock": {"acquire": "after_create", "required": True}}
    first = lab.playbook(role_play(hv1, "lockstep.virt.guests", role_vars))
    assert first.rc == 0, first.stdout[-3000:]
    started = first.task("Bring each guest to its declared state", hv1)["results"]
    assert [r["changed"] for r in started] == [True, True]
    for r in started:
        names = [c["name"] for c in r["lock_checkpoints"]]
        assert names.index("created_paused") < names.index("resumed") < names.index("leases_verified")
    for g in two_guests:
        assert lab.domain_state(hv1, g["name"]) == "running"

    for check in (False, True):
        again = lab.playbook(role_play(hv1, "lockstep.virt.guests", role_vars), check=check, diff=True)
        assert again.rc == 0
        assert changed_tasks(again, hv1) == []


def test_evacuate_role_moves_every_guest_with_its_leases(lab, two_guests):
    hv1, hv2 = lab.hosts[:2]
    start = lab.playbook(role_play(hv1, "lockstep.virt.guests", {"guests_list": two_guests}))
    assert start.rc == 0, start.stdout[-3000:]
    role_vars = {
        "evacuate_destination": hv2,
        "evacuate_pattern": two_guests[0]["name"][:-2] + "-*",
        "evacuate_unsafe": True,
    }
    run = lab.playbook(role_play(hv1, "lockstep.virt.evacuate", role_vars))
    assert run.rc == 0, run.stdout[-3000:]
    for g in two_guests:
        assert lab.domain_state(hv2, g["name"]) == "running"
        assert lab.domain_state(hv1, g["name"]) is None
        disk = os.path.join(lab.images_dir, g["name"] + ".qcow2")
        leases = lab.module(hv2, "lockstep.virt.lease_info", {"name": g["name"]})["guests"][0]["leases"]
        assert leases and all(lease["held_here"] for lease in leases), leases
        assert any(lease.get("path") == disk for lease in leases)
        assert lock_holder(leases[0]["resource"]) == lab.virtlockd_pid(hv2)

    again = lab.playbook(role_play(hv1, "lockstep.virt.evacuate", role_vars))
    assert again.rc == 0
    assert changed_tasks(again, hv1) == []


def test_evacuate_role_refuses_its_own_host(lab):
    hv1 = lab.hosts[0]
    run = lab.playbook(role_play(hv1, "lockstep.virt.evacuate", {"evacuate_destination": hv1}))
    assert run.rc != 0
    assert "must name other hypervisors" in run.task("Refuse to evacuate a host onto itself or to nowhere", hv1)["msg"]


MOVE_TASK = "Move the guests, each with a verified lease handoff, a bounded number at a time"


def move_report(run, host):
    """The evacuate role's report: {guest: its entry}."""
    return dict((g["name"], g) for g in run.task(MOVE_TASK, host)["guests"])


def where(lab, name):
    return [h for h in lab.hosts if lab.domain_state(h, name) in ("running", "paused")]


@pytest.fixture
def three_hosts(lab):
    if len(lab.hosts) < 3:
        pytest.skip("needs a lab of three hosts (tests/lab/lab up --hosts 3)")
    return lab.hosts[:3]


def test_evacuate_role_places_by_free_memory_in_parallel_and_dry_run_changes_nothing(lab, two_guests, three_hosts):
    hv1, hv2, hv3 = three_hosts
    start = lab.playbook(role_play(hv1, "lockstep.virt.guests", {"guests_list": two_guests}))
    assert start.rc == 0, start.stdout[-3000:]
    names = [g["name"] for g in two_guests]
    role_vars = {
        "evacuate_destinations": [hv2, hv3],
        "evacuate_pattern": names[0][:-2] + "-*",
        "evacuate_unsafe": True,
        "evacuate_concurrency": 2,
        "evacuate_concurrency_per_destination": 1,
    }
    for dry in ({"evacuate_dry_run": True}, {}):
        check = not dry
        plan = lab.playbook(role_play(hv1, "lockstep.virt.evacuate", dict(role_vars, **dry)), check=check)
        assert plan.rc == 0, plan.stdout[-3000:]
        assert changed_tasks(plan, hv1) == ([] if dry else [MOVE_TASK])
        lines = plan.task("The plan - order, guest, size, destination", hv1)["msg"]
        assert [line.split(" ")[1] for line in lines] == names  # same size: by name
        assert all("(32 MiB) -> hv" in line for line in lines)
        assert all(where(lab, n) == [hv1] for n in names)

    run = lab.playbook(role_play(hv1, "lockstep.virt.evacuate", role_vars))
    assert run.rc == 0, run.stdout[-3000:]
    for guest in move_report(run, hv1).values():
        assert guest["state"] == "moved"
        assert guest["dest"] in (hv2, hv3)
        assert guest["runs_on"] == [guest["dest"]] == where(lab, guest["name"])
        assert guest["elapsed_s"] > 0 and guest["downtime_ms"] == guest["result"]["downtime_ms"]
        names_cp = [c["name"] for c in guest["result"]["lock_checkpoints"]]
        assert names_cp.index("perform/source_released") < names_cp.index("finish/dest_acquired")
        leases = lab.module(guest["dest"], "lockstep.virt.lease_info", {"name": guest["name"]})["guests"][0]["leases"]
        assert leases and all(lease["held_here"] for lease in leases), leases
    lines = run.task("Where each guest runs now, how long its move took, its pause, or where it failed", hv1)["msg"]
    assert all(" moved to hv" in line and " paused " in line for line in lines)

    again = lab.playbook(role_play(hv1, "lockstep.virt.evacuate", role_vars))
    assert again.rc == 0
    assert changed_tasks(again, hv1) == []


@pytest.fixture
def hv1_only_network(lab, guest_name):
    """A network that exists on the first host only: the migrate preflight refuses every other host."""
    net = guest_name + "-net"
    args = {"name": net, "state": "active", "spec": {"forward": "isolated", "bridge": "br" + guest_name[3:9]}}
    assert not lab.module(lab.hosts[0], "lockstep.virt.network", args).get("failed")
    yield net
    lab.virsh(lab.hosts[0], "net-destroy", net, check=False)
    lab.virsh(lab.hosts[0], "net-undefine", net, check=False)


def test_evacuate_role_stops_at_the_first_failure_and_leaves_every_guest_running_once(
    lab, two_guests, hv1_only_network
):
    hv1, hv2 = lab.hosts[:2]
    two_guests[0]["spec"]["interfaces"] = [{"network": hv1_only_network}]
    start = lab.playbook(role_play(hv1, "lockstep.virt.guests", {"guests_list": two_guests}))
    assert start.rc == 0, start.stdout[-3000:]
    refused, other = [g["name"] for g in two_guests]
    role_vars = {
        "evacuate_destination": hv2,
        "evacuate_placement": {refused: hv2},
        "evacuate_pattern": refused[:-2] + "-*",
        "evacuate_unsafe": True,
        "evacuate_concurrency": 1,
    }
    run = lab.playbook(role_play(hv1, "lockstep.virt.evacuate", role_vars))
    assert run.rc != 0
    report = move_report(run, hv1)
    assert report[refused]["state"] == "failed" and report[refused]["phase"] == "preflight"
    assert hv1_only_network in report[refused]["msg"]
    assert report[other]["state"] == "not_started"
    for name in (refused, other):
        assert report[name]["runs_on"] == [hv1] == where(lab, name)
    leases = lab.module(hv1, "lockstep.virt.lease_info", {"names": [refused, other]})["guests"]
    assert all(lease["held_here"] for g in leases for lease in g["leases"]), leases
    assert (
        "still active here"
        in run.task(
            "Check that every guest moved and the host runs none of the pattern and holds none of their leases", hv1
        )["msg"]
    )

    role_vars["evacuate_continue_on_error"] = True
    go_on = lab.playbook(role_play(hv1, "lockstep.virt.evacuate", role_vars))
    assert go_on.rc != 0
    report = move_report(go_on, hv1)
    assert report[refused]["state"] == "failed" and where(lab, refused) == [hv1]
    assert report[other]["state"] == "moved" and where(lab, other) == [hv2]
