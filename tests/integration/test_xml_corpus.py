"""A corpus of real-world libvirt XML through the collection on a lab host, tuned by no one.

Guest XML is written by a real client, ``virt-install --print-xml`` (Debian's virtinst), on the lab's first
host for many ``--os-variant``s and device options (UEFI and TPM where the host has OVMF and swtpm, spice
with a password, virtio-fs, NICs and disks of every bus, memory devices); networks cover every forward mode
and pools every pool type, in the forms libvirt's own documentation gives. Every document goes through
``lockstep.virt.apply`` (the same managers as the single-object modules, one task per step for the whole
corpus, each document's result checked on its own):

define -> second run unchanged -> check+diff unchanged -> an edit seen (check+diff), applied, then
unchanged -> removal.

A document libvirt (or QEMU) refuses at the first run must be refused with a reason and leave nothing
behind; every document it accepts must be idempotent in every mode. The counts are printed (pytest -s)
and kept in the README ("XML corpus").
"""

import json
import re
import shlex

import pytest

MODULE = "lockstep.virt.apply"
PREFIX = "cx-"
EDIT_NS = "https://lockstep.example/corpus"
SECRETS = ("vncCx-pw", "spice-corpus-pw")

# (name suffix, virt-install options): each a guest as a user would write it with virt-install
DISK = "path={images}/cx-disk.qcow2"
VARIANTS = [
    ("debian11", "--os-variant debian11 --memory 1024 --vcpus 2 --disk {d},bus=virtio --network bridge=br-cx"),
    ("debian11-pc", "--os-variant debian11 --machine pc --memory 512 --disk {d},bus=ide --disk {d},bus=virtio"),
    ("ubuntu2204", "--os-variant ubuntu22.04 --memory 2048 --vcpus 4,sockets=1,cores=2,threads=2 --disk {d}"),
    ("fedora37", "--os-variant fedora37 --memory 2048 --cpu host-passthrough --disk {d},bus=sata"),
    ("rhel9", "--os-variant rhel9.0 --memory 2048 --disk {d},bus=scsi --disk {d},bus=scsi --network user"),
    ("centos9", "--os-variant centos-stream9 --memory 1024 --disk {d},bus=usb --disk {d},device=cdrom,bus=sata"),
    ("opensuse", "--os-variant opensuse15.4 --memory 1024 --disk {d},bus=virtio,cache=none,io=native"),
    ("freebsd", "--os-variant freebsd13.1 --memory 1024 --disk {d},bus=sata --network bridge=br-cx,model=e1000e"),
    ("alpine", "--os-variant alpinelinux3.17 --memory 256 --disk {d} --graphics none --console pty"),
    ("win10", "--os-variant win10 --memory 4096 --disk {d},bus=sata --network bridge=br-cx,model=e1000e"),
    ("win2k19", "--os-variant win2k19 --memory 4096 --disk {d},bus=sata --graphics vnc,password=vncCx-pw"),
    ("generic", "--os-variant generic --memory 128 --disk none --network none --graphics none"),
    (
        "spice-pw",
        "--os-variant debian11 --memory 1024 --disk {d} --graphics spice,password=spice-corpus-pw "
        "--channel spicevmc --video qxl",
    ),
    (
        "nics",
        "--os-variant debian11 --memory 1024 --disk {d} --network bridge=br-cx --network bridge=br-cx,model=e1000e "
        "--network bridge=br-cx,model=rtl8139 --network user --network network=cx-n-nat",
    ),
    (
        "disks",
        "--os-variant debian11 --memory 1024 --disk {d},bus=virtio --disk {d},bus=virtio --disk {d},bus=sata "
        "--disk {d},bus=sata --disk {d},bus=scsi --disk {d},bus=usb --disk {d},device=cdrom,bus=scsi "
        "--disk {d},readonly=on,shareable=on,bus=virtio",
    ),
    (
        "virtiofs",
        "--os-variant debian11 --memory 1024 --disk {d} --memorybacking source.type=memfd,access.mode=shared "
        "--filesystem source=/srv,target=share,driver.type=virtiofs",
    ),
    (
        "dimm",
        "--os-variant debian11 --memory 2048,maxMemory=8192,maxMemory.slots=4 --vcpus 2 "
        "--cpu host-passthrough,cell0.memory=2097152,cell0.cpus=0-1 "
        "--memdev dimm,target.size=512,target.node=0 --memdev dimm,target.size=256,target.node=0 --disk {d}",
    ),
    (
        "devices",
        "--os-variant debian11 --memory 1024 --disk {d} --sound ich9 --rng /dev/urandom --watchdog i6300esb "
        "--serial pty --channel unix,target.type=virtio,name=org.qemu.guest_agent.0 --input keyboard,bus=usb "
        "--controller usb,model=qemu-xhci --video virtio --panic isa",
    ),
]
UEFI = ("uefi", "--os-variant debian11 --memory 1024 --boot uefi --disk {d}")
UEFI_TPM = ("win11", "--os-variant win11 --memory 4096 --boot uefi --tpm emulator --disk {d},bus=sata")
TPM = ("tpm", "--os-variant debian11 --memory 1024 --tpm emulator --disk {d}")

NETWORKS = {
    "nat": "<forward mode='nat'/><bridge name='cxnat0'/><ip address='10.79.1.1' netmask='255.255.255.0'>"
    "<dhcp><range start='10.79.1.100' end='10.79.1.200'/></dhcp></ip>",
    "nat6": "<forward mode='nat'><nat><port start='20000' end='30000'/></nat></forward><bridge name='cxnat6'/>"
    "<ip address='10.79.2.1' prefix='24'/><ip family='ipv6' address='fd00:79:2::1' prefix='64'/>",
    "route": "<forward mode='route' dev='lo'/><bridge name='cxroute'/>"
    "<ip address='10.79.3.1' netmask='255.255.255.0'/>",
    "open": "<forward mode='open'/><bridge name='cxopen'/><ip address='10.79.4.1' netmask='255.255.255.0'/>",
    "isolated": "<bridge name='cxiso' stp='on' delay='0'/><domain name='corpus.test' localOnly='yes'/>"
    "<ip address='10.79.5.1' netmask='255.255.255.0'/>",
    "ipv6no": "<bridge name='cxv6no'/><ip address='10.79.6.1' netmask='255.255.255.0'/>",
    "bridge": "<forward mode='bridge'/><bridge name='br-cx'/>",
    "private": "<forward mode='private'><interface dev='cx-eth0'/></forward>",
    "vepa": "<forward mode='vepa'><interface dev='cx-eth0'/><interface dev='cx-eth1'/></forward>",
    "passthrough": "<forward mode='passthrough'><interface dev='cx-eth2'/></forward>",
    "hostdev": "<forward mode='hostdev' managed='yes'><pf dev='cx-eth3'/></forward>",
    "mtu": "<forward mode='nat'/><bridge name='cxmtu'/><mtu size='9000'/><mac address='52:54:00:79:00:07'/>"
    "<dns><forwarder addr='10.79.7.2'/><host ip='10.79.7.5'><hostname>h5</hostname></host></dns>"
    "<ip address='10.79.7.1' netmask='255.255.255.0'><dhcp><range start='10.79.7.100' end='10.79.7.200'/>"
    "<host mac='52:54:00:79:07:05' name='h5' ip='10.79.7.5'/></dhcp></ip>",
}
NETWORK_ATTRS = {"ipv6no": " ipv6='no'"}

POOLS = {
    "dir": "<pool type='dir'><name>{n}</name><target><path>/var/lib/lockstep-cx/{n}/</path>"
    "<permissions><mode>0755</mode><owner>-1</owner><group>-1</group></permissions></target></pool>",
    "fs": "<pool type='fs'><name>{n}</name><source><device path='/dev/cx-loop'/><format type='ext4'/></source>"
    "<target><path>/mnt/{n}</path></target></pool>",
    "netfs": "<pool type='netfs'><name>{n}</name><source><host name='127.0.0.1'/><dir path='/export/images/'/>"
    "<format type='nfs'/></source><target><path>/mnt/{n}/</path></target></pool>",
    "logical": "<pool type='logical'><name>{n}</name><source><name>cx-vg</name><format type='lvm2'/></source>"
    "<target><path>/dev/{n}</path></target></pool>",
    "disk": "<pool type='disk'><name>{n}</name><source><device path='/dev/cx-disk'/><format type='gpt'/></source>"
    "<target><path>/dev</path></target></pool>",
    "iscsi": "<pool type='iscsi'><name>{n}</name><source><host name='127.0.0.1'/>"
    "<device path='iqn.2013-06.test.example:cx'/></source><target><path>/dev/disk/by-path</path></target></pool>",
    "iscsi-direct": "<pool type='iscsi-direct'><name>{n}</name><source><host name='127.0.0.1'/>"
    "<device path='iqn.2013-06.test.example:cx'/><initiator><iqn name='iqn.2013-06.test.example:client'/>"
    "</initiator></source></pool>",
    "scsi": "<pool type='scsi'><name>{n}</name><source><adapter type='scsi_host' name='host9'/></source>"
    "<target><path>/dev/disk/by-path</path></target></pool>",
    "mpath": "<pool type='mpath'><name>{n}</name><target><path>/dev/mapper</path></target></pool>",
    "rbd": "<pool type='rbd'><name>{n}</name><source><name>rbdpool</name><host name='127.0.0.1' port='6789'/>"
    "</source></pool>",
    "gluster": "<pool type='gluster'><name>{n}</name><source><host name='127.0.0.1'/><dir path='/'/>"
    "<name>volume</name></source></pool>",
    "zfs": "<pool type='zfs'><name>{n}</name><source><name>cxzfs</name></source></pool>",
    "vstorage": "<pool type='vstorage'><name>{n}</name><source><name>cluster</name></source>"
    "<target><path>/mnt/{n}</path></target></pool>",
}


def _host_has(lab, host, path):
    return lab.exec(host, "test", "-e", path, check=False).returncode == 0


def _virt_install(lab, host, name, options, images):
    argv = ["virt-install", "--connect", "qemu:///system", "--print-xml", "--import", "--noautoconsole"]
    if "--network" not in options:  # virt-install's default is a network called default: name one of the corpus
        options += " --network network={}n-nat".format(PREFIX)
    argv += ["--name", name] + shlex.split(options.format(d=DISK.format(images=images)))
    res = lab.exec(host, *argv, check=False, timeout=120)
    return res


def _domains(lab, host):
    """{name: xml} written by virt-install, and {name: reason} of the variants not generated."""
    variants = list(VARIANTS)
    skipped = {}
    has_ovmf = _host_has(lab, host, "/usr/share/OVMF/OVMF_CODE_4M.fd") or _host_has(
        lab, host, "/usr/share/OVMF/OVMF_CODE.fd"
    )
    has_swtpm = _host_has(lab, host, "/usr/bin/swtpm")
    for variant, needs in ((UEFI, (has_ovmf,)), (UEFI_TPM, (has_ovmf, has_swtpm)), (TPM, (has_swtpm,))):
        if all(needs):
            variants.append(variant)
        else:
            skipped[PREFIX + variant[0]] = "the host lacks {}".format("OVMF" if not has_ovmf else "swtpm")
    docs = {}
    for suffix, options in variants:
        name = PREFIX + suffix
        res = _virt_install(lab, host, name, options, lab.images_dir)
        if res.returncode != 0:
            skipped[name] = "virt-install: " + (res.stderr.strip().splitlines() or ["failed"])[-1]
            continue
        docs[name] = res.stdout
    return docs, skipped


def _network_xml(kind):
    return "<network{}><name>{}n-{}</name>{}</network>".format(
        NETWORK_ATTRS.get(kind, ""), PREFIX, kind, NETWORKS[kind]
    )


def _pool_xml(kind):
    return POOLS[kind].format(n="{}p-{}".format(PREFIX, kind))


def _edit_domain(xml):
    """A new <description>: a change every guest takes (a redefinition)."""
    return re.sub(r"(<name>[^<]*</name>)", r"\1<description>edited by the corpus test</description>", xml, count=1)


def _edit_network(xml):
    meta = "<metadata><c:edit xmlns:c='{}'>1</c:edit></metadata>".format(EDIT_NS)
    return re.sub(r"(<name>[^<]*</name>)", r"\1" + meta, xml, count=1)


def _edit_pool(xml):
    if "<target>" in xml and "<permissions>" not in xml:
        return xml.replace("</path></target>", "</path><permissions><mode>0711</mode></permissions></target>")
    if "<mode>0755</mode>" in xml:
        return xml.replace("<mode>0755</mode>", "<mode>0711</mode>")
    return re.sub(r"<host name='127.0.0.1'( port='\d+')?/>", "<host name='127.0.0.1' port='7000'/>", xml)


def _apply(lab, host, items, check=False, diff=False):
    r = lab.module(host, MODULE, items, check=check, diff=diff)
    assert "Traceback" not in str(r), r
    assert "results" in r, {k: v for k, v in r.items() if k != "invocation"}
    # console passwords - given, and read back from libvirt with the secure flag - are never shown
    for secret in SECRETS:
        assert secret not in json.dumps(r), secret
    return dict(((e["kind"], e["name"]), e) for e in r["results"])


def _cleanup(lab, host):
    for name in lab.virsh(host, "list", "--all", "--name", check=False).stdout.split():
        if name.startswith(PREFIX):
            lab.virsh(host, "undefine", name, "--nvram", check=False)
    for name in lab.virsh(host, "net-list", "--all", "--name", check=False).stdout.split():
        if name.startswith(PREFIX):
            lab.virsh(host, "net-destroy", name, check=False)
            lab.virsh(host, "net-undefine", name, check=False)
    for name in lab.virsh(host, "pool-list", "--all", "--name", check=False).stdout.split():
        if name.startswith(PREFIX):
            lab.virsh(host, "pool-undefine", name, check=False)


@pytest.fixture
def corpus_host(lab):
    host = lab.hosts[0]
    _cleanup(lab, host)
    lab.exec(host, "qemu-img", "create", "-f", "qcow2", lab.images_dir + "/cx-disk.qcow2", "16M")
    yield host
    _cleanup(lab, host)
    lab.exec(host, "rm", "-f", lab.images_dir + "/cx-disk.qcow2", check=False)


def test_real_world_xml_corpus(lab, corpus_host):
    host = corpus_host
    domains, not_generated = _domains(lab, host)
    assert len(domains) >= 15, not_generated  # virt-install wrote most of them
    networks = dict((PREFIX + "n-" + k, _network_xml(k)) for k in NETWORKS)
    pools = dict((PREFIX + "p-" + k, _pool_xml(k)) for k in POOLS)
    docs = {"domain": domains, "network": networks, "pool": pools}
    edits = {"domain": _edit_domain, "network": _edit_network, "pool": _edit_pool}

    def items(which, state="present", edit=False):
        out = {"networks": [], "pools": [], "domains": []}
        for kind, option in (("network", "networks"), ("pool", "pools"), ("domain", "domains")):
            for name in which.get(kind, ()):
                xml = docs[kind][name]
                item = {"name": name, "state": state}
                if state != "absent":
                    item["xml"] = edits[kind](xml) if edit else xml
                if kind == "pool":
                    item["build"] = False
                out[option].append(item)
        return out

    every = dict((k, sorted(v)) for k, v in docs.items())
    accepted, refused = {}, {}
    # what the module refuses before it asks libvirt anything (a pool type it does not know) stops the
    # whole batch with nothing changed, naming each document: those are refused with their reason
    r = lab.module(host, MODULE, items(every))
    if "results" not in r:
        msg = r.get("msg", "")
        assert msg.startswith("nothing was changed: "), msg
        for part in msg[len("nothing was changed: ") :].split("; "):
            m = re.match(r"(domain|network|storage pool) (\S+): (.*)", part)
            assert m, part
            kind = "pool" if m.group(1) == "storage pool" else m.group(1)
            refused[(kind, m.group(2))] = "the module: " + m.group(3)
            every[kind].remove(m.group(2))
    first = _apply(lab, host, items(every))
    for (kind, name), e in first.items():
        if e["failed"]:
            refused[(kind, name)] = e["msg"]
            assert e["msg"].strip() and e["changed"] is False, e
            # a refusal leaves nothing behind
            lister = {"domain": "list", "network": "net-list", "pool": "pool-list"}[kind]
            assert name not in lab.virsh(host, lister, "--all", "--name").stdout.split(), (name, e["msg"])
        else:
            assert e["outcome"] == "created", e
            accepted.setdefault(kind, []).append(name)
    assert accepted.get("domain") and accepted.get("network") and accepted.get("pool"), refused

    problems = []
    not_idempotent = set()

    def expect(results, changed, step):
        for kind, names in accepted.items():
            for name in names:
                e = results[(kind, name)]
                if e["failed"] or e["changed"] is not changed:
                    problems.append("{} {} {}: {}".format(step, kind, name, e.get("differences") or e.get("msg")))
                    not_idempotent.add((kind, name))
                elif step.endswith("check+diff") and not changed and e["diff"]["before"] != e["diff"]["after"]:
                    problems.append("{} {} {}: the diff differs".format(step, kind, name))
                    not_idempotent.add((kind, name))

    expect(_apply(lab, host, items(accepted)), False, "second run")
    expect(_apply(lab, host, items(accepted), check=True, diff=True), False, "check+diff")
    seen = _apply(lab, host, items(accepted, edit=True), check=True, diff=True)
    expect(seen, True, "edit in check+diff")
    for key, e in seen.items():
        if not e["failed"] and e["diff"]["before"] == e["diff"]["after"]:
            problems.append("edit in check+diff {} {}: no difference in the diff".format(*key))
            not_idempotent.add(key)
    expect(_apply(lab, host, items(accepted, edit=True)), True, "edit applied")
    expect(_apply(lab, host, items(accepted, edit=True)), False, "after the edit")
    expect(_apply(lab, host, items(accepted, edit=True), check=True, diff=True), False, "after the edit, check+diff")
    expect(_apply(lab, host, items(accepted, state="absent")), True, "removal")
    for kind, lister in (("domain", "list"), ("network", "net-list"), ("pool", "pool-list")):
        left = set(lab.virsh(host, lister, "--all", "--name").stdout.split()) & set(accepted.get(kind, ()))
        if left:
            problems.append("removal left {}s {}".format(kind, sorted(left)))

    idempotent = sum(1 for kind, names in accepted.items() for n in names if (kind, n) not in not_idempotent)
    total = sum(len(v) for v in docs.values())
    print("\nXML corpus on {} (libvirt's own answer):".format(host))
    for kind in ("domain", "network", "pool"):
        print(
            "  {}s: {} documents, {} accepted by libvirt, {} refused with a reason".format(
                kind, len(docs[kind]), len(accepted.get(kind, [])), sum(1 for k in refused if k[0] == kind)
            )
        )
    print(
        "  total: {} documents, {} accepted, {} idempotent in every mode, {} refused with a reason".format(
            total, sum(len(v) for v in accepted.values()), idempotent, len(refused)
        )
    )
    for (kind, name), msg in sorted(refused.items()):
        print("  refused {} {}: {}".format(kind, name, msg[:300]))
    for name, why in sorted(not_generated.items()):
        print("  not generated {}: {}".format(name, why))
    # libvirt accepted these (the define succeeded) but the comparison did not match what it kept: a gap in
    # the XML engine's table of libvirt's defaults, not a refusal by libvirt
    for (kind, name), msg in refused.items():
        if "did not keep part of the definition" in msg:
            problems.append("{} {} defined but not matched: {}".format(kind, name, msg))
    assert not problems, "\n".join(problems)


# What libvirt 9.0 does not know (newer libvirt's): without schema validation it would drop them silently
# and every run would redefine the object.
UNKNOWN = [
    (
        "lockstep.virt.domain",
        "cpu",
        "<domain type='kvm'><name>{n}</name><memory unit='MiB'>128</memory><os><type>hvm</type></os>"
        "<cpu><topology sockets='1' dies='1' clusters='1' cores='1' threads='1'/></cpu></domain>",
    ),
    (
        "lockstep.virt.domain",
        "disk",
        "<domain type='kvm'><name>{n}</name><memory unit='MiB'>128</memory><os><type>hvm</type></os><devices>"
        "<disk type='file' device='disk'><source file='/var/tmp/{n}.img'/><target dev='vda' bus='virtio'/>"
        "<blockio logical_block_size='512' discard_granularity='4096'/></disk></devices></domain>",
    ),
    (
        "lockstep.virt.network",
        "forward",
        "<network><name>{n}</name><forward mode='nat'><driver model='virtio'/></forward>"
        "<bridge name='cxunk0'/><ip address='10.79.9.1' netmask='255.255.255.0'/></network>",
    ),
]


@pytest.mark.parametrize("module,named,xml", UNKNOWN, ids=[u[1] for u in UNKNOWN])
def test_what_this_libvirt_does_not_know_is_refused_at_the_first_run(lab, module, named, xml):
    host = lab.hosts[0]
    name = PREFIX + "unknown-" + named
    lister = "list" if module.endswith("domain") else "net-list"
    r = lab.module_fails(host, module, {"name": name, "xml": xml.format(n=name)})
    assert r["changed"] is False, r
    assert "failed to validate against schema" in r["msg"] and named in r["msg"], r["msg"]
    assert "does not know part of this XML" in r["msg"], r["msg"]
    assert name not in lab.virsh(host, lister, "--all", "--name").stdout.split()


def test_a_console_password_is_compared_and_the_old_one_never_shown(lab):
    host = lab.hosts[0]
    name = PREFIX + "console-pw"
    xml = (
        "<domain type='kvm'><name>{n}</name><memory unit='MiB'>128</memory><os><type>hvm</type></os><devices>"
        "<graphics type='vnc' port='-1' autoport='yes' passwd='{pw}'/>"
        "<graphics type='spice' port='-1' tlsPort='-1' autoport='yes' passwd='{pw}'/></devices></domain>"
    )
    try:
        first = {"name": name, "xml": xml.format(n=name, pw="old-pw1")}
        assert lab.module(host, "lockstep.virt.domain", first)["changed"] is True
        for check, diff in ((False, False), (True, True)):
            r = lab.module(host, "lockstep.virt.domain", first, check=check, diff=diff)
            assert r["changed"] is False, r.get("differences")
        second = dict(first, xml=xml.format(n=name, pw="new-pw22"))
        r = lab.module(host, "lockstep.virt.domain", second, diff=True)
        assert r["changed"] is True and r["actions"] == ["redefine"], r
        assert "old-pw1" not in json.dumps(r) and "new-pw22" not in json.dumps(r)
        assert "********" in r["diff"]["before"]
        assert "new-pw22" in lab.virsh(host, "dumpxml", "--inactive", "--security-info", name).stdout
        assert lab.module(host, "lockstep.virt.domain", second)["changed"] is False
    finally:
        lab.virsh(host, "undefine", name, check=False)
