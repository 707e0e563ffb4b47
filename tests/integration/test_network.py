"""lockstep.virt.network and network_info on the lab's hosts (networks live inside each host's namespace)."""

import random
import uuid

import pytest

MODULE = "lockstep.virt.network"


@pytest.fixture
def net(lab):
    """A fresh network name, bridge and 10.78.x.0/24 subnet; removed from every host afterwards."""
    suffix = uuid.uuid4().hex[:8]
    third = random.randint(20, 249)
    info = {"name": "it-" + suffix, "bridge": "itb" + suffix, "net": "10.78.{}".format(third)}
    yield info
    for host in lab.hosts:
        lab.virsh(host, "net-destroy", info["name"], check=False)
        lab.virsh(host, "net-undefine", info["name"], check=False)


def spec(net, forward="nat", hosts=(), dns=()):
    n = net["net"]
    return {
        "forward": forward,
        "bridge": net["bridge"],
        "domain": "it.test",
        "ipv4": {
            "address": n + ".1",
            "prefix": 24,
            "dhcp_range": {"start": n + ".100", "end": n + ".199"},
            "dhcp_hosts": [
                {"mac": "52:54:00:78:00:{:02x}".format(i + 1), "name": h, "ip": "{}.{}".format(n, 10 + i)}
                for i, h in enumerate(hosts)
            ],
        },
        "dns_hosts": [{"ip": "{}.{}".format(n, 10 + i), "hostnames": [h]} for i, h in enumerate(dns)],
    }


def args(net, **kw):
    out = {"name": net["name"], "state": "active", "spec": spec(net)}
    out.update(kw)
    return out


def dnsmasq_pid(lab, host, name):
    return int(lab.exec(host, "cat", "/run/libvirt/network/{}.pid".format(name)).stdout.strip())


def test_create_and_idempotent_in_every_mode(lab, net):
    hv1 = lab.hosts[0]
    r = lab.module(hv1, MODULE, args(net, autostart=True), check=True, diff=True)
    assert r["changed"] and r["actions"] == ["define", "autostart", "start"], r
    assert lab.virsh(hv1, "net-info", net["name"], check=False).returncode != 0
    r = lab.module(hv1, MODULE, args(net, autostart=True))
    assert r["changed"] and r["network"]["active"] and r["network"]["bridge"] == net["bridge"], r
    assert "Active:         yes" in lab.virsh(hv1, "net-info", net["name"]).stdout
    assert "{}.1/24".format(net["net"]) in lab.exec(hv1, "ip", "-br", "addr", "show", net["bridge"]).stdout
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = lab.module(hv1, MODULE, args(net, autostart=True), check=check, diff=diff)
        assert not r["changed"] and r["actions"] == [] and not r["pending_restart"], (check, diff, r)
    info = lab.module(hv1, "lockstep.virt.network_info", {"name": net["name"]}, check=True)
    (n,) = info["networks"]
    assert n["forward_mode"] == "nat" and n["autostart"] and n["managed"]
    assert n["addresses"][0]["dhcp_range"] == {"start": net["net"] + ".100", "end": net["net"] + ".199"}
    assert n["dhcp_leases"] == []


def test_static_host_added_live_with_the_same_dnsmasq(lab, net):
    hv1 = lab.hosts[0]
    assert lab.module(hv1, MODULE, args(net))["changed"]
    pid = dnsmasq_pid(lab, hv1, net["name"])
    more = args(net, spec=spec(net, hosts=["web1"], dns=["web1"]))
    r = lab.module(hv1, MODULE, more, check=True, diff=True)
    assert r["changed"] and r["actions"] == ["update_hosts"], r
    assert "52:54:00:78:00:01" in r["diff"]["after"] and "52:54:00:78:00:01" not in r["diff"]["before"]
    r = lab.module(hv1, MODULE, more, diff=True)
    assert r["changed"] and r["actions"] == ["update_hosts"] and not r["pending_restart"], r
    assert dnsmasq_pid(lab, hv1, net["name"]) == pid
    lab.exec(hv1, "kill", "-0", str(pid))
    assert "Active:         yes" in lab.virsh(hv1, "net-info", net["name"]).stdout
    hostsfile = lab.exec(hv1, "cat", "/var/lib/libvirt/dnsmasq/{}.hostsfile".format(net["name"])).stdout
    assert "52:54:00:78:00:01" in hostsfile
    for flags in ([], ["--inactive"]):
        assert "52:54:00:78:00:01" in lab.virsh(hv1, "net-dumpxml", *flags, net["name"]).stdout
    assert not lab.module(hv1, MODULE, more)["changed"]
    # and removed live again
    r = lab.module(hv1, MODULE, args(net))
    assert r["actions"] == ["update_hosts"] and dnsmasq_pid(lab, hv1, net["name"]) == pid
    assert "52:54:00:78:00:01" not in lab.virsh(hv1, "net-dumpxml", net["name"]).stdout


def test_forward_mode_change_pending_then_applied(lab, net):
    hv1 = lab.hosts[0]
    lab.module(hv1, MODULE, args(net))
    pid = dnsmasq_pid(lab, hv1, net["name"])
    routed = args(net, spec=spec(net, forward="route"))
    r = lab.module(hv1, MODULE, routed, check=True)
    assert r["changed"] and r["actions"] == ["redefine"] and r["pending_restart"], r
    r = lab.module(hv1, MODULE, routed, diff=True)
    assert r["changed"] and r["actions"] == ["redefine"] and r["pending_restart"], r
    assert "/network/forward/@mode" in r["differences"]
    assert "mode='nat'" in lab.virsh(hv1, "net-dumpxml", net["name"]).stdout
    assert "mode='route'" in lab.virsh(hv1, "net-dumpxml", "--inactive", net["name"]).stdout
    assert dnsmasq_pid(lab, hv1, net["name"]) == pid
    r = lab.module(hv1, MODULE, routed)
    assert not r["changed"] and r["pending_restart"], r
    r = lab.module(hv1, MODULE, dict(routed, restart_on_change=True), check=True)
    assert r["changed"] and r["actions"] == ["restart"]
    r = lab.module(hv1, MODULE, dict(routed, restart_on_change=True))
    assert r["changed"] and r["actions"] == ["restart"] and not r["pending_restart"], r
    assert "mode='route'" in lab.virsh(hv1, "net-dumpxml", net["name"]).stdout
    assert dnsmasq_pid(lab, hv1, net["name"]) != pid
    r = lab.module(hv1, MODULE, dict(routed, restart_on_change=True))
    assert not r["changed"] and not r["pending_restart"]


def test_absent_everywhere_idempotent(lab, net):
    play = [
        {
            "hosts": "hypervisors",
            "gather_facts": False,
            "tasks": [{"name": "net", MODULE: args(net, state="{{ want }}")}],
        }
    ]
    run = lab.playbook(play, extra_vars={"want": "active"})
    assert all(run.task("net", h)["changed"] for h in lab.hosts), run.stdout[-2000:]
    for check, diff in ((True, True), (False, False)):
        run = lab.playbook(play, check=check, diff=diff, extra_vars={"want": "absent"})
        for h in lab.hosts:
            r = run.task("net", h)
            assert r["changed"] and r["actions"] == ["stop", "undefine"], r
    for check, diff in ((False, False), (True, False), (False, True)):
        run = lab.playbook(play, check=check, diff=diff, extra_vars={"want": "absent"})
        assert run.rc == 0
        assert not any(run.task("net", h)["changed"] for h in lab.hosts)
    for h in lab.hosts:
        assert net["name"] not in lab.virsh(h, "net-list", "--all", "--name").stdout


HOSTILE = (
    '<?xml version="1.0"?><!DOCTYPE n [<!ENTITY x SYSTEM "file:///etc/shadow">]><network><name>{}</name>&x;</network>'
)


@pytest.mark.parametrize(
    "bad,needle",
    [
        ({"xml": HOSTILE}, "external entity"),
        ({"xml": "<network><name>{}</name><ip"}, "not well-formed"),
        ({"spec": {"forward": "nat", "vlan": 7}}, "vlan"),
        ({"spec": {"ipv4": {"address": "10.78.0.1", "prefix": 99}}}, "prefix"),
    ],
)
def test_bad_input_changes_nothing(lab, net, bad, needle):
    hv1 = lab.hosts[0]
    a = {"name": net["name"], "state": "active"}
    a.update({k: (v.format(net["name"]) if isinstance(v, str) else v) for k, v in bad.items()})
    r = lab.module_fails(hv1, MODULE, a)
    assert needle in r["msg"] and not r.get("changed"), r
    assert lab.virsh(hv1, "net-info", net["name"], check=False).returncode != 0
