"""Bad input, as a new user might give it, to every module on the real lab: each case is a failed task
with a clear message (asserted), no traceback, and no change on any host - every host's domains (state
and definition), networks, pools, volumes and the files of the test's pool are listed before and after
each case and compared.

All cases run as one playbook (a task per case, each followed by a listing of every host, read on the
controller through the hosts' read-only libvirt sockets), so the catalog costs one ansible-playbook start.
The hosts: ``hv1`` runs a guest (``GUEST``) with a disk and has a directory pool (``POOL``) with one volume
(``VOL``).
"""

import json
import os
import shutil

import pytest
from labkit import define_and_start, libvirt_socket, tiny_domain_xml

CLOSED = "qemu+tcp://127.0.0.1:1/system"  # loopback, a port nothing listens on
BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(
        '<!ENTITY lol{} "{}">'.format(i, ("&lol{};".format(i - 1) if i > 1 else "&lol;") * 10) for i in range(1, 10)
    )
    + ']><domain type="qemu"><name>GUEST</name><description>&lol9;</description></domain>'
)
XXE = '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/shadow">]><{root}><name>{name}</name><description>&x;</description></{root}>'
DOMAIN_SPEC = {"memory": 32, "vcpus": 1, "boot": ["hd"]}
NET_SPEC = {"bridge": "lsvbad0", "ipv4": {"address": "192.0.2.1", "prefix": 24}}

# (id, module, args, part of the message, check mode)
CASES = [
    # ---- domain
    (
        "domain-xxe",
        "domain",
        {"name": "bad-x", "xml": XXE.format(root="domain", name="bad-x")},
        "external entity",
        False,
    ),
    ("domain-billion-laughs", "domain", {"name": "GUEST", "xml": BILLION_LAUGHS, "state": "running"}, "DOCTYPE", False),
    (
        "domain-50mb-xml",
        "domain",
        {"name": "bad-big", "xml": "{{ lookup('ansible.builtin.file', big_xml_path) }}"},
        "characters long; more than 33554432 is refused",
        False,
    ),
    (
        "domain-malformed",
        "domain",
        {"name": "bad-m", "xml": "<domain><name>bad-m</name><memory>32"},
        "not well-formed",
        False,
    ),
    (
        "domain-wrong-root",
        "domain",
        {"name": "bad-r", "xml": "<network><name>bad-r</name></network>"},
        "<domain> root",
        False,
    ),
    (
        "domain-name-mismatch",
        "domain",
        {"name": "GUEST", "xml": "<domain type='qemu'><name>other</name></domain>"},
        "differs from name",
        False,
    ),
    (
        "domain-xml-and-spec",
        "domain",
        {"name": "bad-c", "xml": "<domain/>", "spec": DOMAIN_SPEC},
        "mutually exclusive",
        False,
    ),
    ("domain-unknown-spec-key", "domain", {"name": "bad-k", "spec": dict(DOMAIN_SPEC, colour="blue")}, "colour", False),
    ("domain-unknown-option", "domain", {"name": "bad-o", "colour": "blue"}, "Unsupported parameters", False),
    (
        "domain-memory-type",
        "domain",
        {"name": "bad-t", "spec": dict(DOMAIN_SPEC, memory="lots")},
        "spec.memory must be a size",
        False,
    ),
    ("domain-memory-range", "domain", {"name": "bad-t", "spec": dict(DOMAIN_SPEC, memory=-5)}, "between 1 MiB", False),
    ("domain-vcpus-type", "domain", {"name": "bad-t", "spec": dict(DOMAIN_SPEC, vcpus="many")}, "vcpus", False),
    ("domain-state-choice", "domain", {"name": "GUEST", "state": "exploded"}, "state must be one of", False),
    ("domain-timeout-type", "domain", {"name": "GUEST", "state": "shutdown", "timeout": "soon"}, "timeout", False),
    (
        "domain-lock-choice",
        "domain",
        {"name": "GUEST", "state": "running", "lock": {"acquire": "never"}},
        "acquire",
        False,
    ),
    ("domain-name-slash", "domain", {"name": "bad/slash", "spec": DOMAIN_SPEC}, "contains a path separator", False),
    (
        "domain-name-nul",
        "domain",
        {"name": "bad\0nul", "spec": DOMAIN_SPEC},
        "name must not contain a NUL character",
        False,
    ),
    ("domain-unreachable-uri", "domain", {"name": "GUEST", "uri": CLOSED}, "cannot connect", False),
    ("domain-not-defined", "domain", {"name": "bad-ghost", "state": "running"}, "not defined", False),
    (
        "domain-missing-pool",
        "domain",
        {
            "name": "GUEST",
            "state": "running",
            "spec": dict(DOMAIN_SPEC, disks=[{"pool": "no-such-pool", "volume": "v.qcow2"}]),
        },
        "storage pool no-such-pool",
        False,
    ),
    (
        "domain-missing-pool-check",
        "domain",
        {
            "name": "GUEST",
            "state": "running",
            "spec": dict(DOMAIN_SPEC, disks=[{"pool": "no-such-pool", "volume": "v.qcow2"}]),
        },
        "storage pool no-such-pool",
        True,
    ),
    (
        "domain-missing-volume",
        "domain",
        {
            "name": "GUEST",
            "state": "running",
            "spec": dict(DOMAIN_SPEC, disks=[{"pool": "POOL", "volume": "no-such.qcow2"}]),
        },
        "volume no-such.qcow2 in storage pool POOL",
        False,
    ),
    (
        "domain-missing-network",
        "domain",
        {
            "name": "GUEST",
            "state": "running",
            "spec": dict(
                DOMAIN_SPEC, disks=[{"pool": "POOL", "volume": "VOL"}], interfaces=[{"network": "no-such-net"}]
            ),
        },
        "network no-such-net",
        False,
    ),
    (
        "domain-missing-network-check",
        "domain",
        {"name": "GUEST", "state": "running", "spec": dict(DOMAIN_SPEC, interfaces=[{"network": "no-such-net"}])},
        "network no-such-net",
        True,
    ),
    (
        "domain-missing-network-xml",
        "domain",
        {
            "name": "bad-n",
            "xml": "<domain type='qemu'><name>bad-n</name><memory unit='MiB'>32</memory><os><type>hvm</type></os>"
            "<devices><interface type='network'><source network='no-such-net'/></interface></devices></domain>",
        },
        "network no-such-net",
        False,
    ),
    # ---- domain_info
    ("domain_info-addresses-choice", "domain_info", {"addresses": "telepathy"}, "addresses must be one of", False),
    ("domain_info-name-and-pattern", "domain_info", {"name": "a", "pattern": "b"}, "mutually exclusive", False),
    ("domain_info-state-choice", "domain_info", {"state": ["sideways"]}, "state must be one or more of", False),
    ("domain_info-name-nul", "domain_info", {"name": "a\0b"}, "name must not contain a NUL character", False),
    ("domain_info-unreachable-uri", "domain_info", {"uri": CLOSED}, "cannot connect", False),
    # ---- network
    (
        "network-xxe",
        "network",
        {"name": "bad-net", "xml": XXE.format(root="network", name="bad-net")},
        "external entity",
        False,
    ),
    (
        "network-malformed",
        "network",
        {"name": "bad-net", "xml": "<network><name>bad-net</name"},
        "not well-formed",
        False,
    ),
    (
        "network-unknown-spec-key",
        "network",
        {"name": "bad-net", "spec": dict(NET_SPEC, colour="blue")},
        "colour",
        False,
    ),
    (
        "network-prefix-range",
        "network",
        {"name": "bad-net", "spec": dict(NET_SPEC, ipv4={"address": "192.0.2.1", "prefix": 40})},
        "prefix must be between 1 and 32",
        False,
    ),
    (
        "network-address-type",
        "network",
        {"name": "bad-net", "spec": dict(NET_SPEC, ipv4={"address": "not-an-ip", "prefix": 24})},
        "is not an IP address",
        False,
    ),
    ("network-name-slash", "network", {"name": "../bad-net", "spec": NET_SPEC}, "contains a path separator", False),
    (
        "network-xml-and-spec",
        "network",
        {"name": "bad-net", "xml": "<network/>", "spec": NET_SPEC},
        "mutually exclusive",
        False,
    ),
    (
        "network-unreachable-uri",
        "network",
        {"name": "bad-net", "uri": CLOSED, "spec": NET_SPEC},
        "cannot connect",
        False,
    ),
    # ---- network_info
    ("network_info-unknown-option", "network_info", {"colour": "blue"}, "Unsupported parameters", False),
    ("network_info-unreachable-uri", "network_info", {"uri": CLOSED}, "cannot connect", False),
    # ---- pool
    (
        "pool-xxe",
        "pool",
        {"name": "bad-pool", "xml": XXE.format(root="pool", name="bad-pool")},
        "external entity",
        False,
    ),
    (
        "pool-wrong-root",
        "pool",
        {"name": "bad-pool", "xml": "<domain><name>bad-pool</name></domain>"},
        "<pool> root",
        False,
    ),
    (
        "pool-type-choice",
        "pool",
        {"name": "bad-pool", "spec": {"type": "floppy", "path": "/tmp/x"}},
        "type must be one of",
        False,
    ),
    (
        "pool-relative-path",
        "pool",
        {"name": "bad-pool", "spec": {"type": "dir", "path": "relative/dir"}},
        "must be an absolute path",
        False,
    ),
    (
        "pool-name-nul",
        "pool",
        {"name": "bad\0pool", "spec": {"type": "dir", "path": "/var/tmp/bad-pool"}},
        "name must not contain a NUL character",
        False,
    ),
    (
        "pool-unreachable-uri",
        "pool",
        {"name": "bad-pool", "uri": CLOSED, "spec": {"path": "/var/tmp/x"}},
        "cannot connect",
        False,
    ),
    # ---- pool_info
    ("pool_info-unknown-option", "pool_info", {"colour": "blue"}, "Unsupported parameters", False),
    ("pool_info-unreachable-uri", "pool_info", {"uri": CLOSED}, "cannot connect", False),
    # ---- volume
    (
        "volume-missing-pool",
        "volume",
        {"pool": "no-such-pool", "name": "v.qcow2", "capacity": "16M"},
        "storage pool no-such-pool does not exist on hv1",
        False,
    ),
    (
        "volume-url-without-checksum",
        "volume",
        {"pool": "POOL", "name": "bad-url.qcow2", "format": "qcow2", "import_from": "http://127.0.0.1:9/i.img"},
        "no checksum is given",
        False,
    ),
    (
        "volume-url-scheme",
        "volume",
        {"pool": "POOL", "name": "bad-url.qcow2", "import_from": "ftp://user:S3cretPW@127.0.0.1/i.img"},
        "only http:// and https:// URLs can be fetched",
        False,
    ),
    (
        "volume-name-traversal",
        "volume",
        {"pool": "POOL", "name": "../escape.qcow2", "capacity": "16M", "format": "qcow2"},
        "contains a path separator",
        False,
    ),
    (
        "volume-name-nul",
        "volume",
        {"pool": "POOL", "name": "bad\0v.qcow2", "capacity": "16M"},
        "name must not contain a NUL character",
        False,
    ),
    (
        "volume-capacity-type",
        "volume",
        {"pool": "POOL", "name": "bad.qcow2", "capacity": "lots"},
        "capacity must be a size",
        False,
    ),
    (
        "volume-capacity-range",
        "volume",
        {"pool": "POOL", "name": "bad.qcow2", "capacity": -1},
        "capacity must not be negative",
        False,
    ),
    (
        "volume-conflicting-sources",
        "volume",
        {"pool": "POOL", "name": "bad.qcow2", "capacity": "16M", "clone_from": "VOL", "backing_volume": "VOL"},
        "mutually exclusive",
        False,
    ),
    (
        "volume-clone-missing",
        "volume",
        {"pool": "POOL", "name": "bad.qcow2", "clone_from": "no-such.qcow2"},
        "volume no-such.qcow2 does not exist in pool POOL",
        False,
    ),
    (
        "volume-import-missing",
        "volume",
        {"pool": "POOL", "name": "bad.qcow2", "capacity": "16M", "import_from": "/nonexistent/image.qcow2"},
        "is not a regular file on hv1",
        False,
    ),
    (
        "volume-shrink",
        "volume",
        {"pool": "POOL", "name": "VOL", "capacity": "1M"},
        "shrinking volume vol.qcow2 from 16 MiB to 1 MiB is refused",
        False,
    ),
    # ---- volume_info
    (
        "volume_info-missing-pool",
        "volume_info",
        {"pool": "no-such-pool"},
        "storage pool no-such-pool does not exist on hv1",
        False,
    ),
    ("volume_info-unreachable-uri", "volume_info", {"pool": "POOL", "uri": CLOSED}, "cannot connect", False),
    # ---- secret, secret_info, snapshot, snapshot_info
    ("secret-unreachable-uri", "secret", {"usage": "ceph", "usage_id": "x", "uri": CLOSED}, "cannot connect", False),
    ("secret-usage-without-id", "secret", {"usage": "ceph"}, "usage and usage_id go together", False),
    ("secret_info-unreachable-uri", "secret_info", {"uri": CLOSED}, "cannot connect", False),
    ("snapshot-unreachable-uri", "snapshot", {"domain": "g", "name": "s", "uri": CLOSED}, "cannot connect", False),
    ("snapshot-unknown-option", "snapshot", {"domain": "g", "name": "s", "bogus": 1}, "bogus", False),
    ("snapshot_info-unreachable-uri", "snapshot_info", {"domain": "g", "uri": CLOSED}, "cannot connect", False),
    # ---- apply
    ("apply-unreachable-uri", "apply", {"uri": CLOSED, "domains": [{"name": "bad-au"}]}, "cannot connect", False),
    (
        "apply-item-unknown-option",
        "apply",
        {"domains": [{"name": "bad-ao", "colour": "blue"}]},
        "domains[0] (bad-ao): unsupported option colour",
        False,
    ),
    (
        "apply-item-listed-twice",
        "apply",
        {"networks": [{"name": "bad-an", "spec": NET_SPEC}, {"name": "bad-an", "spec": NET_SPEC}]},
        "bad-an is listed twice",
        True,
    ),
    (
        "apply-item-bad-state",
        "apply",
        {"pools": [{"name": "bad-ap", "state": "melted"}]},
        "value of state must be one of",
        False,
    ),
    (
        "apply-item-xxe",
        "apply",
        {"domains": [{"name": "bad-ax", "xml": XXE.format(root="domain", name="bad-ax")}]},
        "external entity",
        False,
    ),
    # ---- migrate
    (
        "migrate-missing-guest",
        "migrate",
        {"name": "bad-ghost", "dest_uri": "qemu+ssh://hv2/system", "unsafe": True},
        "guest bad-ghost not found on hv1",
        False,
    ),
    (
        "migrate-unreachable-dest",
        "migrate",
        {"name": "GUEST", "dest_uri": CLOSED, "unsafe": True},
        "cannot reach the destination",
        False,
    ),
    (
        "migrate-bandwidth-range",
        "migrate",
        {"name": "GUEST", "dest_uri": "qemu+ssh://hv2/system", "bandwidth": -5},
        "bandwidth must be a positive number",
        False,
    ),
    (
        "migrate-mode-choice",
        "migrate",
        {"name": "GUEST", "dest_uri": "qemu+ssh://hv2/system", "mode": "teleport"},
        "mode must be one of",
        False,
    ),
    (
        "migrate-postcopy-offline",
        "migrate",
        {"name": "GUEST", "dest_uri": "qemu+ssh://hv2/system", "live": False, "postcopy": 1},
        "postcopy needs a live migration",
        False,
    ),
    (
        "migrate-extra-flag",
        "migrate",
        {"name": "GUEST", "dest_uri": "qemu+ssh://hv2/system", "extra_flags": ["warp"]},
        "extra_flags",
        False,
    ),
    (
        "migrate-name-nul",
        "migrate",
        {"name": "bad\0nul", "dest_uri": "qemu+ssh://hv2/system", "unsafe": True},
        "NUL",
        False,
    ),
    (
        "migrate-timeout-type",
        "migrate",
        {"name": "GUEST", "dest_uri": "qemu+ssh://hv2/system", "timeout": "soon"},
        "timeout",
        False,
    ),
    (
        "migrate-to-itself",
        "migrate",
        {"name": "GUEST", "dest_uri": "qemu+ssh://hv1/system", "unsafe": True},
        "is the source host hv1",
        False,
    ),
    # ---- migrate_many
    (
        "migrate_many-concurrency-range",
        "migrate_many",
        {"names": ["GUEST"], "destinations": ["hv2"], "concurrency": 0},
        "concurrency must be at least 1",
        False,
    ),
    (
        "migrate_many-dest-uri-without-host",
        "migrate_many",
        {"names": ["GUEST"], "destinations": ["hv2"], "dest_uri": CLOSED},
        "dest_uri must contain {host}",
        False,
    ),
    (
        "migrate_many-placement-type",
        "migrate_many",
        {"names": ["GUEST"], "placement": "hv2"},
        "'placement' is of type str",
        False,
    ),
    # ---- export
    ("export-unreachable-uri", "export", {"uri": CLOSED}, "cannot connect", False),
    ("export-include-choice", "export", {"include": ["guests"]}, "value of include must be one or more of", False),
    ("export-names-type", "export", {"names": 5}, "names must be a list of names or patterns", False),
    ("export-names-kind", "export", {"names": {"disks": ["a"]}}, "names: unknown kinds disks", False),
    # ---- lease_info
    ("lease_info-names-type", "lease_info", {"names": {"a": 1}}, "'names' is of type dict", False),
    ("lease_info-name-nul", "lease_info", {"names": ["a\0b"]}, "names must not contain a NUL character", False),
    ("lease_info-unreachable-uri", "lease_info", {"uri": CLOSED}, "cannot connect", False),
]

# every host's domains (state and inactive definition), networks, pools (definition without the sizes that
# change by themselves), volumes (capacity) and the listed directories, read on the controller through each
# host's read-only libvirt socket (argv: a JSON {host: socket path} and the directories): one process for all
SNAPSHOT = r"""
import hashlib, json, os, sys, libvirt
libvirt.registerErrorHandler(lambda *_: None, None)
def digest(text):
    return hashlib.md5(text.encode()).hexdigest()[:12]
def by_name(objects):
    return sorted(objects, key=lambda o: o.name())
for host, sock in sorted(json.loads(sys.argv[1]).items()):
    conn = libvirt.openReadOnly("qemu+unix:///system?socket=" + sock)
    for d in by_name(conn.listAllDomains()):
        print(host, "domain", d.name(), d.state()[0], digest(d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
    for n in by_name(conn.listAllNetworks()):
        print(host, "network", n.name(), digest(n.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)), n.isActive())
    for p in by_name(conn.listAllStoragePools()):
        lines = p.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE).splitlines()
        sizes = ("<capacity", "<allocation", "<available")
        print(host, "pool", p.name(), digest("".join(line for line in lines if not line.strip().startswith(sizes))))
        for v in by_name(p.listAllVolumes()) if p.isActive() else []:
            print(host, "volume", p.name() + "/" + v.name(), v.info()[1])
    conn.close()
    print(host, "listed")
for path in sys.argv[2:]:
    print(path, sorted(os.listdir(path)))
"""


def _subst(value, names):
    if isinstance(value, str):
        for key, real in names.items():
            value = value.replace(key, real)
        return value
    if isinstance(value, dict):
        return dict((k, _subst(v, names)) for k, v in value.items())
    if isinstance(value, list):
        return [_subst(v, names) for v in value]
    return value


def _names(setting):
    return dict((k, v) for k, v in setting.items() if k in ("GUEST", "POOL", "VOL"))


@pytest.fixture(scope="module")
def setting(lab, tmp_path_factory):
    """A running guest, a directory pool with one volume on hv1, and a 50 MB domain document."""
    tag = os.urandom(3).hex()
    guest = "bi-" + tag
    pool = "bi-pool-" + tag
    pool_dir = os.path.join(lab.shared_dir, pool)
    os.makedirs(pool_dir)
    big = str(tmp_path_factory.mktemp("bad-input") / "big.xml")
    with open(big, "w") as fh:
        fh.write("<domain type='qemu'><name>bad-big</name><description>")
        fh.write("x" * (50 * 2**20))
        fh.write("</description></domain>")
    disk = lab.new_disk(guest)
    try:
        assert define_and_start(lab, "hv1", tiny_domain_xml(guest, disk=disk)).returncode == 0
        lab.virsh("hv1", "pool-create-as", pool, "dir", "--target", pool_dir)
        lab.virsh("hv1", "vol-create-as", pool, "vol.qcow2", "16M", "--format", "qcow2")
        yield {
            "GUEST": guest,
            "POOL": pool,
            "VOL": "vol.qcow2",
            "big_xml_path": big,
            "dirs": [pool_dir, lab.shared_dir],
        }
    finally:
        lab.cleanup_domain(guest)
        lab.virsh("hv1", "pool-destroy", pool, check=False)
        shutil.rmtree(pool_dir, ignore_errors=True)
        os.unlink(disk)


@pytest.fixture(scope="module")
def catalog(lab, setting):
    """Run every case in one playbook; return {case id: (result, status, snapshot before, snapshot after)}."""
    names = _names(setting)
    sockets = dict((h, libvirt_socket(info["anchor"])) for h, info in lab.state["hosts"].items())
    snapshot = {
        "name": "snapshot",
        "ansible.builtin.command": {
            "argv": ["{{ ansible_playbook_python }}", "-c", SNAPSHOT, json.dumps(sockets)] + setting["dirs"]
        },
        "delegate_to": "localhost",
        "changed_when": False,
    }
    tasks = [dict(snapshot, name="snapshot start")]
    for case_id, module, args, _message, check in CASES:
        task = {"name": case_id, "lockstep.virt." + module: _subst(args, names), "ignore_errors": True}
        if check:
            task["check_mode"] = True
        tasks += [task, dict(snapshot, name="snapshot after " + case_id)]
    play = [{"hosts": "hv1", "gather_facts": False, "vars": {"big_xml_path": setting["big_xml_path"]}, "tasks": tasks}]
    run = lab.playbook(play, timeout=1200)
    assert "Traceback (most recent call last)" not in run.stdout + run.stderr, run.stdout[-5000:]
    out = {}
    before = run.task("snapshot start")["stdout"]
    assert set(lab.all_hosts) <= set(line.split()[0] for line in before.splitlines() if line.endswith(" listed"))
    for case_id, *_rest in CASES:
        entry = [r for r in run.results if r["task"] == case_id and r["host"] == "hv1"]
        after = run.task("snapshot after " + case_id)["stdout"]
        out[case_id] = (entry[0]["result"] if entry else None, entry[0]["status"] if entry else None, before, after)
        before = after
    return out


PARAMS = [pytest.param(*case, id=case[0]) for case in CASES]


@pytest.mark.parametrize("case_id,module,args,message,check", PARAMS)
def test_bad_input_fails_cleanly_and_changes_nothing(catalog, setting, case_id, module, args, message, check):
    result, status, before, after = catalog[case_id]
    assert result is not None, "the case did not run"
    assert status == "failed", result
    msg = str(result.get("msg", ""))
    assert _subst(message, _names(setting)) in msg, msg
    assert "Traceback (most recent call last)" not in str(result.get("exception", "")) + msg
    assert not result.get("changed"), result
    assert after == before, "a host changed"


def test_catalog_covers_every_module():
    modules_dir = os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "plugins", "modules"
    )
    modules = set(f[:-3] for f in os.listdir(modules_dir) if f.endswith(".py") and not f.startswith("_"))
    assert set(c[1] for c in CASES) == modules
    assert len(CASES) >= 40
