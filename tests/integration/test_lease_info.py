"""lockstep.virt.lease_info on the lab: which host holds what, and running guests exposed to a split brain."""

import hashlib
import os

from labkit import define_and_start, tiny_domain_xml

MODULE = "lockstep.virt.lease_info"


def test_lease_info_across_hosts_shows_who_holds_what(lab, guest_name):
    disk = lab.new_disk(guest_name)
    key = guest_name + "-lease"
    vm_lease = lab.lease_file(key)
    disk_lease = os.path.join(lab.lockspace_dir, hashlib.sha256(disk.encode()).hexdigest())
    try:
        xml = tiny_domain_xml(guest_name, disk=disk, lease=key, lockspace_dir=lab.lockspace_dir)
        assert define_and_start(lab, "hv1", xml).returncode == 0

        on_hv1 = lab.module("hv1", MODULE, {"names": [guest_name, "absent-" + guest_name]})
        assert on_hv1["changed"] is False
        assert on_hv1["host"] == "hv1"
        lm = on_hv1["lock_manager"]
        assert lm["manager"] == "lockd" and lm["auto_disk_leases"] is True
        assert lm["require_lease_for_disks"] is False
        assert lm["file_lockspace_dir"] == lab.lockspace_dir and lab.lockspace_dir in lm["lockspace_dirs"]
        assert lm["virtlockd_pids"] == [lab.virtlockd_pid("hv1")]
        assert on_hv1["missing"] == ["absent-" + guest_name]
        (guest,) = on_hv1["guests"]
        assert guest["state"] == "running"
        by_kind = {x["kind"]: x for x in guest["leases"]}
        assert by_kind["disk"]["resource"] == disk_lease and by_kind["disk"]["disk"] == "vda"
        assert by_kind["lease"]["resource"] == vm_lease and by_kind["lease"]["key"] == key
        for x in guest["leases"]:
            assert x["held"] is True and x["held_here"] is True
            assert x["holder_pid"] == lab.virtlockd_pid("hv1")
            assert x["lockspace"] == lab.lockspace_dir
        assert guest_name not in [u["name"] for u in on_hv1["unleased_running"]]

        # hv2 has a shut-off definition of the same guest: its leases are held, but not by hv2
        lab.exec("hv1", "sh", "-c", "virsh dumpxml --inactive {0} > {1}/{0}.xml".format(guest_name, lab.shared_dir))
        lab.virsh("hv2", "define", "{}/{}.xml".format(lab.shared_dir, guest_name))
        os.unlink("{}/{}.xml".format(lab.shared_dir, guest_name))
        on_hv2 = lab.module("hv2", MODULE, {"names": [guest_name]})
        (guest2,) = on_hv2["guests"]
        assert guest2["state"] == "shutoff"
        for x in guest2["leases"]:
            assert x["held"] is True and x["held_here"] is False
            assert x["holder_pid"] == lab.virtlockd_pid("hv1")
        assert on_hv2["unleased_running"] == []
    finally:
        lab.cleanup_domain(guest_name)
        for path in (disk, vm_lease):
            if os.path.exists(path):
                os.unlink(path)


def test_running_guest_with_an_unleased_disk_is_reported(lab, guest_name):
    """Seen through a lock configuration with auto_disk_leases = 0 (the engine's config override), a running
    guest whose disk has no VM lease either is exposed to a split brain."""
    disk = lab.new_disk(guest_name)
    conf = os.path.join(lab.shared_dir, guest_name + "-lockd.conf")
    with open(conf, "w") as fh:
        fh.write('auto_disk_leases = 0\nfile_lockspace_dir = "{}"\n'.format(lab.lockspace_dir))
    try:
        assert define_and_start(lab, "hv1", tiny_domain_xml(guest_name, disk=disk)).returncode == 0
        play = [
            {
                "hosts": "hv1",
                "gather_facts": False,
                "environment": {"LOCKSTEP_VIRT_LOCKD_CONF": conf},
                "tasks": [{"name": "under test", MODULE: {"names": [guest_name]}}],
            }
        ]
        res = lab.playbook(play).task("under test", "hv1")
        assert res["lock_manager"]["auto_disk_leases"] is False
        assert res["lock_manager"]["require_lease_for_disks"] is True
        (entry,) = res["unleased_running"]
        assert entry["name"] == guest_name
        assert "read-write disk vda" in entry["reasons"][0] and "has no lease" in entry["reasons"][0]
    finally:
        lab.cleanup_domain(guest_name)
        for path in (disk, conf):
            if os.path.exists(path):
                os.unlink(path)
