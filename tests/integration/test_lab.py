"""The lab itself: real hosts, real libvirtd, QEMU and virtlockd, wired as the collection needs."""

import hashlib
import os

from labkit import define_and_start, lock_holder, tiny_domain_xml


def test_each_host_answers_over_ssh_and_qemu_ssh(lab):
    assert len(lab.hosts) >= 2
    for host in lab.hosts:
        assert lab.ssh(host, "hostname").stdout.strip() == host
        for peer in lab.hosts:
            if peer == host:
                continue
            res = lab.exec(host, "virsh", "-c", "qemu+ssh://{}/system".format(peer), "hostname")
            assert res.stdout.strip() == peer


def test_host_uuids_differ_and_match_libvirt(lab):
    seen = set()
    for host in lab.hosts:
        caps = lab.virsh(host, "capabilities").stdout
        live_uuid = caps.split("<uuid>")[1].split("</uuid>")[0]
        assert live_uuid == lab.host_uuid(host)
        seen.add(live_uuid)
    assert len(seen) == len(lab.hosts)


def test_lease_directory_is_shared_and_lockd_is_on(lab):
    marker = os.path.join(lab.lockspace_dir, ".probe-{}".format(os.getpid()))
    lab.exec(lab.hosts[0], "touch", marker)
    try:
        for host in lab.hosts:
            conf = lab.exec(host, "cat", "/etc/libvirt/qemu-lockd.conf").stdout
            assert 'file_lockspace_dir = "{}"'.format(lab.lockspace_dir) in conf
            assert 'lock_manager = "lockd"' in lab.exec(host, "cat", "/etc/libvirt/qemu.conf").stdout
            assert lab.exec(host, "test", "-e", marker, check=False).returncode == 0
    finally:
        os.unlink(marker)


def test_libvirts_default_network_is_never_defined(lab):
    """The lab's libvirt has no `default` network (192.168.122.0/24 would clash with the machine's own); the
    networks users and other tests define on the lab are theirs, not looked at here."""
    for host in lab.hosts:
        assert lab.virsh(host, "net-info", "default", check=False).returncode != 0
        assert lab.exec(host, "test", "-e", "/etc/libvirt/qemu/networks/default.xml", check=False).returncode != 0
        assert (
            lab.exec(host, "test", "-e", "/etc/libvirt/qemu/networks/autostart/default.xml", check=False).returncode
            != 0
        )


def test_disk_lease_held_by_the_running_host_and_second_start_refused(lab, guest_name):
    hv1, hv2 = lab.hosts[:2]
    disk = lab.new_disk(guest_name)
    res = define_and_start(lab, hv1, tiny_domain_xml(guest_name, disk=disk))
    assert res.returncode == 0, res.stderr
    lease = os.path.join(lab.lockspace_dir, hashlib.sha256(disk.encode()).hexdigest())
    assert lock_holder(lease) == lab.virtlockd_pid(hv1)

    res = define_and_start(lab, hv2, tiny_domain_xml(guest_name, disk=disk))
    assert res.returncode != 0
    assert "lock" in res.stderr  # QEMU's image lock or virtlockd: either refuses
    assert lab.domain_state(hv2, guest_name) == "shut off"
    assert lab.domain_state(hv1, guest_name) == "running"
    assert lock_holder(lease) == lab.virtlockd_pid(hv1)


def test_vm_lease_refused_while_held_elsewhere_then_granted(lab, guest_name):
    hv1, hv2 = lab.hosts[:2]
    key = guest_name + "-lease"
    lease = lab.lease_file(key)
    xml = tiny_domain_xml(guest_name, lease=key, lockspace_dir=lab.lockspace_dir)
    assert define_and_start(lab, hv1, xml).returncode == 0
    assert lock_holder(lease) == lab.virtlockd_pid(hv1)

    res = define_and_start(lab, hv2, xml)
    assert res.returncode != 0
    assert "resource busy" in res.stderr and key in res.stderr, res.stderr
    assert lab.domain_state(hv2, guest_name) == "shut off"

    lab.virsh(hv1, "destroy", guest_name)
    assert lock_holder(lease) is None
    assert lab.virsh(hv2, "start", guest_name, check=False).returncode == 0
    assert lock_holder(lease) == lab.virtlockd_pid(hv2)
    os.unlink(lease)


def test_live_migration_moves_the_guest_and_its_lease(lab, guest_name):
    hv1, hv2 = lab.hosts[:2]
    disk = lab.new_disk(guest_name)
    assert define_and_start(lab, hv1, tiny_domain_xml(guest_name, disk=disk)).returncode == 0
    lease = os.path.join(lab.lockspace_dir, hashlib.sha256(disk.encode()).hexdigest())
    assert lock_holder(lease) == lab.virtlockd_pid(hv1)

    lab.virsh(
        hv1,
        "migrate",
        "--live",
        "--p2p",
        "--unsafe",  # the lab's shared directory is a local filesystem
        "--persistent",
        "--undefinesource",
        guest_name,
        "qemu+ssh://{}/system".format(hv2),
    )
    running = [h for h in lab.hosts if lab.domain_state(h, guest_name) == "running"]
    assert running == [hv2]
    assert lab.domain_state(hv1, guest_name) is None  # undefined on the source
    assert lock_holder(lease) == lab.virtlockd_pid(hv2)


def test_an_unlocked_host_runs_guests_without_any_lease(lab, guest_name):
    assert lab.unlocked_hosts, "make test brings the lab up with one host without a lock manager"
    host = lab.unlocked_hosts[0]
    assert "lock_manager" not in lab.exec(host, "grep", "-v", "^#", "/etc/libvirt/qemu.conf").stdout
    disk = lab.new_disk(guest_name)
    assert define_and_start(lab, host, tiny_domain_xml(guest_name, disk=disk)).returncode == 0
    lease = os.path.join(lab.lockspace_dir, hashlib.sha256(disk.encode()).hexdigest())
    assert not os.path.exists(lease)
    assert lab.domain_state(host, guest_name) == "running"
