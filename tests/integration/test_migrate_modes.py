"""lockstep.virt.migrate's other transports and storage copies on the lab, with the same checks as the default.

- ``mode: direct``: the module drives the migration protocol itself, connected to both libvirtds (no
  VIR_MIGRATE_PEER2PEER); ``mode: tunnelled``: peer-to-peer with the data through the libvirtd connection.
- ``copy_storage: all`` and ``incremental``: the guest's disk is on each host's own local directory
  (/var/lib/libvirt/images is private to each lab host), copied during the migration. Its disk lease is
  named by the disk's path in the shared lockspace, so the handoff is the same.

Each run: the success checkpoints in the order the rules need, every one ok, never two holders of a lease
(sampled every few ms), the guest running only on the destination with the leases held by its virtlockd,
and back again.
"""

import hashlib
import os

import pytest
from labkit import define_and_start
from migrate_helpers import (
    Guest,
    Sampler,
    assert_checkpoints_sound,
    assert_handoff_order,
    assert_runs_only_on,
    failed,
    migrate,
)

LOCAL_DIR = "/var/lib/libvirt/images"


class LocalDiskGuest(Guest):
    """A guest whose qcow2 disk lives in hv1's own local directory (optionally over a shared backing file)."""

    def __init__(self, lab, name, host, backing=None):
        self.lab, self.name, self.host = lab, name, host
        self.sanlock = False  # virtlockd's leases: this module's tests run on a virtlockd lab
        self.disk = os.path.join(LOCAL_DIR, name + ".qcow2")
        self.backing = backing
        self.create_disk(host)
        self.key = name + "-lease"
        self.vm_lease = lab.lease_file(self.key)
        self.disk_lease = os.path.join(lab.lockspace_dir, hashlib.sha256(self.disk.encode()).hexdigest())
        self.leases = [self.disk_lease, self.vm_lease]
        res = define_and_start(lab, host, self.domain_xml())
        assert res.returncode == 0, res.stderr

    def create_disk(self, host):
        argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if self.backing:
            argv += ["-b", self.backing, "-F", "qcow2"]
        self.lab.exec(host, *(argv + [self.disk] + ([] if self.backing else ["16M"])))

    def remove(self):
        self.lab.cleanup_domain(self.name)
        for host in self.lab.hosts:
            self.lab.exec(host, "rm", "-f", self.disk, check=False)
        for path in (self.vm_lease, self.backing):
            if path and os.path.exists(path):
                os.unlink(path)


def round_trip(lab, guest, **options):
    for src, dst in (("hv1", "hv2"), ("hv2", "hv1")):
        with Sampler(guest.leases) as sampler:
            res = migrate(lab, src, dst, guest.name, **options)
        assert not failed(res), res.get("msg")
        assert res["changed"] is True and res["state"] == "running"
        assert_handoff_order(res)
        assert all(c["ok"] for c in res["lock_checkpoints"]), res["lock_checkpoints"]
        assert_checkpoints_sound(lab, res, src, dst)
        assert sampler.max_holders() <= 1
        assert_runs_only_on(lab, guest, dst, src)
        assert migrate(lab, src, dst, guest.name, **options)["changed"] is False
    return res


@pytest.mark.parametrize("mode", ["direct", "tunnelled"])
def test_transport_modes_hand_off_the_leases(lab, guest_name, mode):
    guest = Guest(lab, guest_name, "hv1")
    try:
        res = round_trip(lab, guest, mode=mode)
        flags = res["plan"]["flags"]
        if mode == "direct":
            assert "PEER2PEER" not in flags and res["plan"]["api"] == "migrate3"
        else:
            assert {"PEER2PEER", "TUNNELLED"} <= set(flags)
    finally:
        guest.remove()


def test_copy_storage_all_moves_a_local_disk(lab, guest_name):
    guest = LocalDiskGuest(lab, guest_name, "hv1")
    try:
        guest.create_disk("hv2")  # libvirt copies into an existing image of the same size
        res = round_trip(lab, guest, copy_storage="all")
        assert "NON_SHARED_DISK" in res["plan"]["flags"]
        assert res["job"]["data_total"] > 0
    finally:
        guest.remove()


def test_copy_storage_incremental_moves_the_top_layer(lab, guest_name):
    base = lab.new_disk(guest_name + "-base")
    guest = LocalDiskGuest(lab, guest_name, "hv1", backing=base)
    try:
        guest.create_disk("hv2")  # the same overlay over the shared base; only the top layer travels
        res = round_trip(lab, guest, copy_storage="incremental")
        assert "NON_SHARED_INC" in res["plan"]["flags"]
    finally:
        guest.remove()
