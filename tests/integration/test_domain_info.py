"""lockstep.virt.domain_info on the lab: ad hoc over the hypervisors group, and a running guest's disks and leases."""

import hashlib
import json
import os
import re

from labkit import define_and_start, lock_holder, tiny_domain_xml

MODULE = "lockstep.virt.domain_info"


def adhoc_results(stdout):
    """{host: (status, result)} from the default callback's ``host | STATUS => {json}`` lines."""
    decoder = json.JSONDecoder()
    out = {}
    for m in re.finditer(r"^(\S+) \| (\w+) => ", stdout, re.M):
        result, _end = decoder.raw_decode(stdout, m.end())
        out[m.group(1)] = (m.group(2), result)
    return out


def test_domain_info_reports_disk_leases_and_runs_ad_hoc(lab, guest_name):
    disk = lab.new_disk(guest_name)
    key = guest_name + "-lease"
    vm_lease = lab.lease_file(key)
    disk_lease = os.path.join(lab.lockspace_dir, hashlib.sha256(disk.encode()).hexdigest())
    vl1 = lab.virtlockd_pid("hv1")
    try:
        xml = tiny_domain_xml(guest_name, disk=disk, lease=key, lockspace_dir=lab.lockspace_dir)
        assert define_and_start(lab, "hv1", xml).returncode == 0
        assert lock_holder(disk_lease) == vl1 and lock_holder(vm_lease) == vl1

        r = lab.module("hv1", MODULE, {"name": guest_name}, check=True)
        assert r["changed"] is False and r["count"] == 1, r
        (guest,) = r["domains"]
        assert guest["name"] == guest_name and guest["state"] == "running" and guest["persistent"] is True
        assert guest["memory_mib"] == 32 and guest["vcpus"] == 1 and guest["managed"] is False
        assert guest["uuid"] == lab.virsh("hv1", "domuuid", guest_name).stdout.strip()
        (d,) = guest["disks"]
        assert d["path"] == disk and d["target"] == "vda" and d["format"] == "qcow2"
        assert d["lease_resource"] == disk_lease
        assert d["held"] is True and d["held_here"] is True and d["holder_pid"] == vl1
        disk_l, lease = guest["leases"]  # disks first, then <lease> elements: the shape domain and lease_info use
        assert disk_l["kind"] == "disk" and disk_l["resource"] == disk_lease and disk_l["path"] == disk
        assert lease["kind"] == "lease" and lease["key"] == key and lease["resource"] == vm_lease
        assert disk_l["lockspace"] == lease["lockspace"] == lab.lockspace_dir  # the directory, in every result
        for x in (disk_l, lease):
            assert x["held"] is True and x["held_here"] is True and x["holder_pid"] == vl1

        # as the README says: ansible hypervisors -m lockstep.virt.domain_info
        res = lab.adhoc("hypervisors", MODULE, "")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "Traceback" not in res.stdout + res.stderr
        results = adhoc_results(res.stdout)
        assert sorted(results) == sorted(lab.hosts), res.stdout[-3000:]
        for host, (status, result) in results.items():
            assert status == "SUCCESS" and result["changed"] is False, (host, result)
            assert result["count"] == len(result["domains"])
        ours = [g for g in results["hv1"][1]["domains"] if g["name"] == guest_name]
        assert len(ours) == 1 and ours[0]["state"] == "running"
        assert ours[0]["disks"][0]["lease_resource"] == disk_lease and ours[0]["disks"][0]["held_here"] is True
        assert guest_name not in [g["name"] for g in results["hv2"][1]["domains"]]
    finally:
        lab.cleanup_domain(guest_name)
        for path in (disk, vm_lease, disk_lease):
            if os.path.exists(path) and lock_holder(path) is None:
                os.unlink(path)
