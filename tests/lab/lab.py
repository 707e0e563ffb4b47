"""The lockstep.virt lab: several real libvirt hypervisor hosts on one Linux machine.

Each host lives in its own network, mount and UTS namespace with its own libvirtd,
virtlogd, virtlockd and sshd, its own /etc/libvirt, /var/lib/libvirt, /var/log/libvirt,
/var/cache/libvirt, /run and /root.  A bridge in the root namespace joins the hosts and
the controller.  A directory every host sees at the same path stands in for NFS and holds
disk images and virtlockd's lockspace.

    lab deps                 install the Debian packages the lab needs
    lab up [--hosts N] [--unlocked M] [--lock-manager lockd|sanlock]
                             create hv1..hvN with virtlockd (or sanlock), then M hosts without
                             a lock manager (idempotent; replaces a stale or different lab)
    lab down [--purge]       remove everything the lab made (--purge: the image cache too)
    lab status [--json]      what runs, and whether it answers
    lab inventory            print the path of the Ansible inventory the lab wrote
    lab image [--force]      build the lab's Linux guest image (cached; prints its directory)
    lab exec HOST -- CMD...  run a command inside a host's namespaces
    lab restart HOST DAEMON  stop a host's daemon if it runs and start it again (fault tests)

Runs as root, stdlib only.  Everything it makes is recorded under LAB_ROOT so that `down`
removes exactly that and nothing else.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

from labpaths import BRIDGE, CACHE_DIR, LAB_ROOT, NETNS_PREFIX, SUBNET

STATE_FILE = os.path.join(LAB_ROOT, "state.json")
SHARED_DIR = os.path.join(LAB_ROOT, "shared")
LOCKSPACE_DIR = os.path.join(SHARED_DIR, "lockd")
# sanlock (lab up --lock-manager sanlock): libvirt's automatic disk leases (lockspace
# __LIBVIRT__DISKS__ and one lease file per disk) live in SANLOCK_DIR; VM_LOCKSPACE is a
# lockspace every sanlock host joins, for explicit <lease> elements (their lease files are
# made with `sanlock direct init -r VM_LOCKSPACE:KEY:PATH:0`, in SANLOCK_VM_DIR)
SANLOCK_DIR = os.path.join(SHARED_DIR, "sanlock")
SANLOCK_VM_DIR = os.path.join(SHARED_DIR, "sanlock-vm")
DISK_LOCKSPACE = "__LIBVIRT__DISKS__"
VM_LOCKSPACE = "lockstep_vm"
VM_LOCKSPACE_FILE = os.path.join(SANLOCK_VM_DIR, "lockspace")
SANLOCK_SHIM = os.path.join(LAB_ROOT, "sanlock-shim", "setrlimit-shim.so")
LOCK_MANAGERS = ("lockd", "sanlock")
IMAGES_DIR = os.path.join(SHARED_DIR, "images")
SSH_DIR = os.path.join(LAB_ROOT, "ssh")
HOSTS_DIR = os.path.join(LAB_ROOT, "hosts")
INVENTORY = os.path.join(LAB_ROOT, "inventory.yml")

VETH_PREFIX = NETNS_PREFIX
BRIDGE_ADDR = SUBNET + ".1"
PREFIX_LEN = 24

DAEMONS = ("virtlogd", "virtlockd", "libvirtd", "sshd")
# a sanlock host runs its own sanlock daemon before libvirtd (libvirt's plugin joins the
# disk lockspace through it while the QEMU driver starts)
SANLOCK_DAEMONS = ("virtlogd", "virtlockd", "sanlock", "libvirtd", "sshd")


def host_daemons(state, name):
    """The daemons a host runs: a sanlock host adds its sanlock daemon."""
    if state.get("lock_manager") == "sanlock" and name not in state.get("unlocked", []):
        return SANLOCK_DAEMONS
    return DAEMONS


PACKAGES = (
    "libvirt-daemon-system",
    "libvirt-clients",
    "qemu-system-x86",
    "qemu-utils",
    "seabios",
    "openssh-server",
    "openssh-client",
    "python3",
    "python3-venv",
    "python3-libvirt",
    "python3-lxml",
    "dnsmasq-base",
    "iptables",
    "iproute2",
    "util-linux",
    "procps",
    "xorriso",
    # sanlock as the lock manager (lab up --lock-manager sanlock): the daemon, libvirt's plugin,
    # and a C compiler for the lab's setrlimit shim
    "sanlock",
    "libvirt-sanlock",
    # the fault harness's sanlock client on a lab host (a process that acquires a lease through the daemon)
    "python3-sanlock",
    "gcc",
    "libc6-dev",
    # the XML corpus test (tests/integration/test_xml_corpus.py): guest XML written by a real client
    # (virt-install --print-xml), UEFI firmware and a software TPM for the variants that need them
    "virtinst",
    "ovmf",
    "swtpm",
    "swtpm-tools",
)


def log(msg):
    print("lab: " + msg, file=sys.stderr, flush=True)


def run(argv, check=True, capture=True, input=None, timeout=120):
    res = subprocess.run(
        argv,
        check=False,
        capture_output=capture,
        text=True,
        input=input,
        timeout=timeout,
    )
    if check and res.returncode != 0:
        raise SystemExit("lab: command failed ({}): {}\n{}".format(res.returncode, " ".join(argv), res.stderr or ""))
    return res


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)


def host_names(count):
    return ["hv{}".format(i) for i in range(1, count + 1)]


def host_addr(name):
    return "{}.{}".format(SUBNET, 10 + int(name[2:]))


def host_dir(name):
    return os.path.join(HOSTS_DIR, name)


def netns_name(name):
    return NETNS_PREFIX + name


def load_state():
    try:
        with open(STATE_FILE) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def save_state(state):
    write(STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n", 0o600)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        with open("/proc/{}/stat".format(pid)) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def parent_pid(pid):
    try:
        with open("/proc/{}/stat".format(pid)) as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def existing_netns():
    res = run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(NETNS_PREFIX)]


def link_exists(name):
    return run(["ip", "link", "show", name], check=False).returncode == 0


# --------------------------------------------------------------------------- deps


def missing_packages():
    res = run(["dpkg-query", "-W", "-f=${Package} ${Status}\n"] + list(PACKAGES), check=False)
    installed = {line.split()[0] for line in res.stdout.splitlines() if line.endswith("install ok installed")}
    return [p for p in PACKAGES if p not in installed]


def cmd_deps(_args=None):
    missing = missing_packages()
    if not missing:
        return 0
    log("installing " + " ".join(missing))
    # Keep the packages' own daemons from starting in the root namespace (libvirt's default
    # NAT network must never run there): a policy-rc.d denying starts, only while we install.
    policy = "/usr/sbin/policy-rc.d"
    made_policy = not os.path.exists(policy)
    if made_policy:
        write(policy, "#!/bin/sh\n# lockstep.virt lab: no service starts during package install\nexit 101\n", 0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends"] + missing,
            check=True,
            env=env,
        )
    finally:
        if made_policy:
            os.unlink(policy)
    return 0


# --------------------------------------------------------------------------- config files


def libvirtd_conf(host_uuid):
    return """# lockstep.virt lab host
host_uuid = "{uuid}"
unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
""".format(uuid=host_uuid)


QEMU_CONF = """# lockstep.virt lab host
{lock_manager}
# Lab-only simplifications: QEMU runs as root without cgroups, mount namespaces or
# labelling, so guests on the shared directory migrate between hosts of one machine.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "logd"
"""

QEMU_LOCKD_CONF = """# lockstep.virt lab host: indirect leases on shared storage
auto_disk_leases = 1
require_lease_for_disks = 0
file_lockspace_dir = "{lockspace}"
""".format(lockspace=LOCKSPACE_DIR)

VIRTLOCKD_CONF = 'log_outputs = "3:file:/var/log/libvirt/virtlockd.log"\n'
VIRTLOGD_CONF = 'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n'
LIBVIRT_CLIENT_CONF = 'uri_default = "qemu:///system"\n'


def sshd_config(name):
    hdir = host_dir(name)
    return """# lockstep.virt lab host {name}
ListenAddress {addr}
Port 22
HostKey {hdir}/ssh_host_ed25519_key
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
AuthorizedKeysFile .ssh/authorized_keys
AcceptEnv LANG LC_*
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp /usr/lib/openssh/sftp-server
""".format(name=name, addr=host_addr(name), hdir=hdir)


def etc_hosts(names, me):
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    for n in names:
        lines.append("{} {}".format(host_addr(n), n))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- ssh material


def ensure_ssh_material(names):
    os.makedirs(SSH_DIR, mode=0o700, exist_ok=True)
    key = os.path.join(SSH_DIR, "id_ed25519")
    if not os.path.exists(key):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lockstep-lab", "-f", key])
    known = []
    for n in names:
        hkey = os.path.join(host_dir(n), "ssh_host_ed25519_key")
        if not os.path.exists(hkey):
            os.makedirs(host_dir(n), exist_ok=True)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lockstep-lab-" + n, "-f", hkey])
        with open(hkey + ".pub") as fh:
            kind, blob = fh.read().split()[:2]
        known.append("{},{} {} {}".format(n, host_addr(n), kind, blob))
    write(os.path.join(SSH_DIR, "known_hosts"), "\n".join(known) + "\n", 0o644)
    with open(key + ".pub") as fh:
        pub = fh.read()
    config = []
    for n in names:
        config.append(
            "Host {n} {addr}\n  HostName {addr}\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
            "  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n".format(
                n=n, addr=host_addr(n), key=key, known=os.path.join(SSH_DIR, "known_hosts")
            )
        )
    write(os.path.join(SSH_DIR, "config"), "\n".join(config), 0o600)
    # each host's own /root: the lab key lets the controller and every peer log in, and the
    # hosts' daemons reach each other for peer-to-peer migration with recorded host keys
    for n in names:
        root = os.path.join(host_dir(n), "root")
        sshd = os.path.join(root, ".ssh")
        os.makedirs(sshd, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
        os.chmod(sshd, 0o700)
        write(os.path.join(sshd, "authorized_keys"), pub, 0o600)
        shutil.copyfile(key, os.path.join(sshd, "id_ed25519"))
        os.chmod(os.path.join(sshd, "id_ed25519"), 0o600)
        write(os.path.join(sshd, "id_ed25519.pub"), pub, 0o644)
        shutil.copyfile(os.path.join(SSH_DIR, "known_hosts"), os.path.join(sshd, "known_hosts"))
        write(os.path.join(sshd, "config"), "StrictHostKeyChecking yes\nBatchMode yes\n", 0o600)


def ssh_base_args():
    return [
        "ssh",
        "-F",
        os.path.join(SSH_DIR, "config"),
        "-o",
        "ConnectTimeout=5",
        "-o",
        "BatchMode=yes",
    ]


# --------------------------------------------------------------------------- kvm


def kvm_prepare(state):
    """Give /dev/kvm to group kvm (as udev would on a desktop), remembering how it was."""
    if not os.path.exists("/dev/kvm"):
        state["kvm"] = {"present": False}
        return
    st = os.stat("/dev/kvm")
    info = state.get("kvm") or {"present": True, "orig_gid": st.st_gid, "orig_mode": st.st_mode & 0o777}
    try:
        import grp

        gid = grp.getgrnam("kvm").gr_gid
        os.chown("/dev/kvm", -1, gid)
        os.chmod("/dev/kvm", 0o660)
    except (KeyError, OSError) as exc:
        info["error"] = str(exc)
    state["kvm"] = info


def kvm_usable():
    try:
        import fcntl

        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, 0xAE00) == 12  # KVM_GET_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def kvm_restore(state):
    info = (state or {}).get("kvm") or {}
    if info.get("present") and os.path.exists("/dev/kvm") and "orig_gid" in info:
        try:
            os.chown("/dev/kvm", -1, info["orig_gid"])
            os.chmod("/dev/kvm", info["orig_mode"])
        except OSError as exc:
            log("could not restore /dev/kvm: {}".format(exc))


# --------------------------------------------------------------------------- hosts


def nsenter(anchor, argv):
    return ["nsenter", "-t", str(anchor), "-m", "-u", "-n", "--"] + list(argv)


def host_argv(anchor, argv):
    """``argv`` as run inside a lab host (the namespaces of its anchor), with a clean environment."""
    return nsenter(
        anchor, ["env", "-i", "HOME=/root", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"] + list(argv)
    )


def host_run(state, name, argv, check=True, input=None, timeout=120):
    return run(host_argv(state["hosts"][name]["anchor"], argv), check=check, input=input, timeout=timeout)


def qemu_conf(locked, lock_manager="lockd"):
    if locked:
        return QEMU_CONF.format(lock_manager='lock_manager = "{}"'.format(lock_manager))
    return QEMU_CONF.format(lock_manager="# no lock manager: a host to show what lockstep.virt refuses there")


def sanlock_host_id(name):
    """A sanlock host's host_id (1..2000, unique in the lab): its number, hv3 -> 3."""
    return int(name[2:])


def qemu_sanlock_conf(name):
    return """# lockstep.virt lab host: sanlock leases on shared storage
auto_disk_leases = 1
require_lease_for_disks = 0
disk_lease_dir = "{dir}"
host_id = {host_id}
user = "root"
group = "root"
""".format(dir=SANLOCK_DIR, host_id=sanlock_host_id(name))


# sanlock raises RLIMIT_MEMLOCK and RLIMIT_RTPRIO at start and gives up when it cannot; the
# sandbox the lab runs in lacks CAP_SYS_RESOURCE.  This shim (LD_PRELOAD) reports success for
# those two limits only.  With it and `-w 0` (no watchdog) sanlock cannot fence its host: a
# lab, not a production setup.
SANLOCK_SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/resource.h>

typedef int (*setrlimit_fn)(__rlimit_resource_t, const struct rlimit *);

int setrlimit(__rlimit_resource_t resource, const struct rlimit *rlim)
{
    static setrlimit_fn real;
    if (resource == RLIMIT_MEMLOCK || resource == RLIMIT_RTPRIO)
        return 0;
    if (!real)
        real = (setrlimit_fn)dlsym(RTLD_NEXT, "setrlimit");
    return real(resource, rlim);
}
"""


def build_sanlock_shim():
    os.makedirs(os.path.dirname(SANLOCK_SHIM), exist_ok=True)
    src = SANLOCK_SHIM[: -len(".so")] + ".c"
    write(src, SANLOCK_SHIM_C)
    run(["gcc", "-shared", "-fPIC", "-O2", "-o", SANLOCK_SHIM, src, "-ldl"])
    return SANLOCK_SHIM


def prepare_host_tree(name, names, host_uuid, locked=True, lock_manager="lockd"):
    hdir = host_dir(name)
    etc = os.path.join(hdir, "etc-libvirt")
    for sub in ("qemu/networks/autostart", "qemu/autostart", "storage/autostart", "nwfilter", "secrets"):
        os.makedirs(os.path.join(etc, sub), exist_ok=True)
    write(os.path.join(etc, "libvirtd.conf"), libvirtd_conf(host_uuid))
    write(os.path.join(etc, "qemu.conf"), qemu_conf(locked, lock_manager))
    write(os.path.join(etc, "qemu-lockd.conf"), QEMU_LOCKD_CONF)
    if locked and lock_manager == "sanlock":
        write(os.path.join(etc, "qemu-sanlock.conf"), qemu_sanlock_conf(name))
    write(os.path.join(etc, "virtlockd.conf"), VIRTLOCKD_CONF)
    write(os.path.join(etc, "virtlogd.conf"), VIRTLOGD_CONF)
    write(os.path.join(etc, "libvirt.conf"), LIBVIRT_CLIENT_CONF)
    for sub in ("var-lib-libvirt/images", "var-lib-libvirt/qemu", "var-log-libvirt/qemu", "var-cache-libvirt"):
        os.makedirs(os.path.join(hdir, sub), exist_ok=True)
    write(os.path.join(hdir, "etc-hosts"), etc_hosts(names, name))
    write(os.path.join(hdir, "etc-hostname"), name + "\n")
    write(os.path.join(hdir, "sshd_config"), sshd_config(name), 0o600)


DAEMON_COMMANDS = {
    "virtlogd": ["/usr/sbin/virtlogd", "-d", "-p", "/run/virtlogd.pid"],
    "virtlockd": ["/usr/sbin/virtlockd", "-d", "-p", "/run/virtlockd.pid"],
    "libvirtd": ["/usr/sbin/libvirtd", "-d", "-p", "/run/libvirtd.pid"],
    "sshd": ["/usr/sbin/sshd", "-f", "{hdir}/sshd_config"],
}
# -D: stays in the foreground (the anchor keeps its pid); -w 0: no watchdog (wdmd);
# -l 0: no mlockall
# -L -1: no log file (it would be the machine's /var/log/sanlock.log; stderr goes to the host's dir);
# -U/-G 0: as root, the owner qemu-sanlock.conf gives the lease files (Debian's default is user sanlock)
SANLOCK_COMMAND = ["/usr/sbin/sanlock", "daemon", "-D", "-w", "0", "-l", "0", "-L", "-1", "-U", "0", "-G", "0"]


def start_sanlock(hdir):
    """Start the host's sanlock daemon under the setrlimit shim; its pid, once it answers."""
    os.makedirs("/run/sanlock", exist_ok=True)
    env = {"HOME": "/root", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LD_PRELOAD": SANLOCK_SHIM}
    log_fh = open(os.path.join(hdir, "sanlock.log"), "w")
    proc = subprocess.Popen(SANLOCK_COMMAND, env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=log_fh, stderr=log_fh)
    log_fh.close()
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("sanlock exited ({}), see {}/sanlock.log".format(proc.returncode, hdir))
        res = subprocess.run(["sanlock", "client", "status"], capture_output=True, text=True, check=False)
        if res.returncode == 0:
            return proc.pid
        time.sleep(0.2)
    raise RuntimeError("sanlock does not answer (see {}/sanlock.log)".format(hdir))


def start_host(state, name):
    """Start the host's anchor: the process that owns its mount + UTS namespaces inside its
    netns, starts its daemons and reaps whatever they leave behind (QEMU, dnsmasq, sessions),
    so no zombie outlives a guest."""
    hdir = host_dir(name)
    for marker in ("anchor.ready", "anchor.err"):
        if os.path.exists(os.path.join(hdir, marker)):
            os.unlink(os.path.join(hdir, marker))
    log_fh = open(os.path.join(hdir, "anchor.log"), "w")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns_name(name), "unshare", "--mount", "--uts", "--propagation", "private", "--"]
        + [sys.executable, os.path.abspath(__file__), "_anchor", name],
        stdin=subprocess.DEVNULL,
        stdout=log_fh,
        stderr=log_fh,
        start_new_session=True,
    )
    log_fh.close()
    state["hosts"][name]["anchor"] = proc.pid  # ip, unshare and python exec in place
    save_state(state)
    deadline = time.time() + 60
    while time.time() < deadline:
        if os.path.exists(os.path.join(hdir, "anchor.ready")):
            with open(os.path.join(hdir, "pids.json")) as fh:
                state["hosts"][name]["pids"] = json.load(fh)
            save_state(state)
            return
        if os.path.exists(os.path.join(hdir, "anchor.err")) or proc.poll() is not None:
            break
        time.sleep(0.05)
    with open(os.path.join(hdir, "anchor.log")) as fh:
        raise SystemExit("lab: host {} did not start:\n{}".format(name, fh.read()))


def wait_pidfile(path, timeout=10.0):
    """The live pid a daemon wrote to ``path``, or None when none appears in time."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(path) as fh:
                pid = int(fh.read().strip())
            if pid_alive(pid):
                return pid
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return None


def anchor_main(name):
    """Runs inside the host's fresh namespaces (see start_host)."""
    import ctypes

    hdir = host_dir(name)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: daemons and guests reparent here
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        with open(STATE_FILE) as fh:
            daemons = host_daemons(json.load(fh), name)
        # a sanlock daemon always creates /var/log/sanlock.log (even with -L -1): it gets the host's own /var/log
        private_log = "mkdir -p {h}/var-log/libvirt\nmount --bind {h}/var-log /var/log\n"
        script = """set -e
hostname {name}
mount -t tmpfs -o mode=0755 lab-run /run
mkdir -p /run/lock /run/sshd /run/libvirt /run/sanlock
mount --bind {h}/etc-libvirt /etc/libvirt
mount --bind {h}/var-lib-libvirt /var/lib/libvirt
{private_log}mount --bind {h}/var-log-libvirt /var/log/libvirt
mount --bind {h}/var-cache-libvirt /var/cache/libvirt
mount --bind {h}/etc-hosts /etc/hosts
mount --bind {h}/etc-hostname /etc/hostname
mount --bind {h}/root /root
""".format(name=name, h=hdir, private_log=private_log.format(h=hdir) if "sanlock" in daemons else "")
        subprocess.run(["sh", "-c", script], check=True)
        env = {"HOME": "/root", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        pids = {}
        for daemon in daemons:
            if daemon == "sanlock":
                pids[daemon] = start_sanlock(hdir)
                continue
            argv = [a.format(hdir=hdir) for a in DAEMON_COMMANDS[daemon]]
            subprocess.run(argv, check=True, env=env, cwd="/", stdin=subprocess.DEVNULL)
            pid = wait_pidfile("/run/{}.pid".format(daemon))
            if pid is None:
                raise RuntimeError("{} did not start (see {}/var-log-libvirt)".format(daemon, hdir))
            pids[daemon] = pid
        write(os.path.join(hdir, "pids.json"), json.dumps(pids) + "\n")
        write(os.path.join(hdir, "anchor.ready"), "")
    except Exception as exc:  # reported to `up` through the marker, then the anchor leaves
        write(os.path.join(hdir, "anchor.err"), str(exc))
        print("anchor {}: {}".format(name, exc), flush=True)
        return 1
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(1)
        except InterruptedError:
            pass


def wait_libvirt(state, name, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        res = host_run(state, name, ["virsh", "-c", "qemu:///system", "version"], check=False, timeout=60)
        if res.returncode == 0:
            return
        time.sleep(0.5)
    raise SystemExit("lab: libvirtd on {} does not answer: {}".format(name, res.stderr.strip()))


def wait_ssh(name, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host_addr(name), 22), timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("lab: sshd on {} does not answer".format(name))


def create_network(names):
    if not link_exists(BRIDGE):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", "{}/{}".format(BRIDGE_ADDR, PREFIX_LEN), "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
    for n in names:
        ns = netns_name(n)
        veth = VETH_PREFIX + n
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "link", "set", veth, "master", BRIDGE])
        run(["ip", "link", "set", veth, "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "addr", "add", "{}/{}".format(host_addr(n), PREFIX_LEN), "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])


# --------------------------------------------------------------------------- inventory


def write_inventory(names, unlocked=(), lock_manager="lockd"):
    """Group hypervisors: the hosts with virtlockd on; unlocked_hypervisors: those without."""
    key = os.path.join(SSH_DIR, "id_ed25519")
    known = os.path.join(SSH_DIR, "known_hosts")
    lines = ["# Written by tests/lab/lab; the lab's hypervisor hosts.", "all:", "  children:"]
    for group, members in (
        ("hypervisors", [n for n in names if n not in unlocked]),
        ("unlocked_hypervisors", unlocked),
    ):
        if not members:
            continue
        lines += ["    {}:".format(group), "      hosts:"]
        for n in members:
            lines += ["        {}:".format(n), "          ansible_host: {}".format(host_addr(n))]
    lines += [
        "  vars:",
        "    ansible_user: root",
        "    ansible_connection: ansible.builtin.ssh",
        "    ansible_python_interpreter: /usr/bin/python3",
        "    ansible_ssh_private_key_file: {}".format(key),
        "    ansible_ssh_common_args: >-",
        "      -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes".format(known),
        "    lab_shared_dir: {}".format(SHARED_DIR),
        "    lab_lockspace_dir: {}".format(LOCKSPACE_DIR),
        "    lab_images_dir: {}".format(IMAGES_DIR),
        "    lab_lock_manager: {}".format(lock_manager),
    ]
    if lock_manager == "sanlock":
        lines += [
            "    lab_sanlock_disk_lease_dir: {}".format(SANLOCK_DIR),
            "    lab_sanlock_vm_lockspace: {}".format(VM_LOCKSPACE),
            "    lab_sanlock_vm_lockspace_file: {}".format(VM_LOCKSPACE_FILE),
            "    lab_sanlock_vm_lease_dir: {}".format(SANLOCK_VM_DIR),
        ]
    write(INVENTORY, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- status


def host_status(state, name):
    info = state["hosts"].get(name, {})
    anchor = info.get("anchor")
    st = {"name": name, "address": host_addr(name), "host_uuid": info.get("host_uuid")}
    st["lock_manager"] = None if name in state.get("unlocked", []) else state.get("lock_manager", "lockd")
    st["namespace"] = bool(anchor and pid_alive(anchor)) and netns_name(name) in existing_netns()
    daemons = host_daemons(state, name)
    st["daemons"] = {d: bool(info.get("pids", {}).get(d) and pid_alive(info["pids"][d])) for d in daemons}
    st["libvirt"] = False
    if st["namespace"] and st["daemons"]["libvirtd"]:
        res = host_run(state, name, ["virsh", "-c", "qemu:///system", "uri"], check=False, timeout=30)
        st["libvirt"] = res.returncode == 0
    st["ssh"] = False
    if st["daemons"]["sshd"]:
        res = run(ssh_base_args() + [name, "true"], check=False, timeout=30)
        st["ssh"] = res.returncode == 0
    if st["lock_manager"] == "sanlock":
        st["sanlock_host_id"] = sanlock_host_id(name)
        st["lockspaces"] = []
        if st["namespace"] and st["daemons"].get("sanlock"):
            res = host_run(state, name, ["sanlock", "client", "status"], check=False, timeout=30)
            st["lockspaces"] = sorted(
                line.split()[1].split(":")[0] for line in res.stdout.splitlines() if line.startswith("s ")
            )
        st["sanlock"] = all(ls in st["lockspaces"] for ls in (DISK_LOCKSPACE, VM_LOCKSPACE))
    st["healthy"] = (
        st["namespace"] and all(st["daemons"].values()) and st["libvirt"] and st["ssh"] and st.get("sanlock", True)
    )
    return st


def gather_status():
    state = load_state()
    if not state:
        return {"up": False, "hosts": [], "stale": bool(existing_netns() or link_exists(BRIDGE))}
    hosts = [host_status(state, n) for n in state["names"]]
    return {
        "up": all(h["healthy"] for h in hosts),
        "stale": False,
        "hosts": hosts,
        "accel": "kvm" if kvm_usable() else "tcg (software emulation)",
        "shared_dir": SHARED_DIR,
        "lockspace_dir": LOCKSPACE_DIR,
        "lock_manager": state.get("lock_manager", "lockd"),
        "sanlock": state.get("sanlock"),
        "inventory": INVENTORY,
    }


def cmd_status(args):
    st = gather_status()
    if args.json:
        print(json.dumps(st, indent=2))
        return 0 if st["up"] else 1
    if not st["hosts"]:
        print("lab: down" + (" (stale remnants: run `lab down`)" if st["stale"] else ""))
        return 1
    print(
        "lab: {}   accel: {}   lock manager: {}   lockspace: {}".format(
            "up" if st["up"] else "DEGRADED",
            st["accel"],
            st["lock_manager"],
            SANLOCK_DIR if st["lock_manager"] == "sanlock" else st["lockspace_dir"],
        )
    )
    if st["lock_manager"] == "sanlock":
        print("  sanlock: no watchdog, setrlimit shim: no self-fencing (a lab, not production)")
    for h in st["hosts"]:
        daemons = " ".join("{}={}".format(d, "ok" if ok else "DOWN") for d, ok in h["daemons"].items())
        print(
            "  {:4} {:12} uuid={} lock={} libvirt={} ssh={} {}".format(
                h["name"],
                h["address"],
                h["host_uuid"],
                h["lock_manager"] or "off",
                "ok" if h["libvirt"] else "DOWN",
                "ok" if h["ssh"] else "DOWN",
                daemons,
            )
            + (
                " host_id={} lockspaces={}".format(h["sanlock_host_id"], ",".join(h["lockspaces"]) or "NONE")
                if h["lock_manager"] == "sanlock"
                else ""
            )
        )
    return 0 if st["up"] else 1


# --------------------------------------------------------------------------- up / down


def cmd_up(args):
    if os.geteuid() != 0:
        raise SystemExit("lab: must run as root")
    cmd_deps()
    names = host_names(args.hosts + args.unlocked)
    unlocked = names[args.hosts :]
    lock_manager = args.lock_manager
    state = load_state()
    if state and gather_status()["up"] and extends(state, names, unlocked, lock_manager):
        new = [n for n in names if n not in state["names"]]
        if not new:
            write_inventory(names, unlocked, lock_manager)
            log("already up ({})".format(", ".join(names)))
            print(INVENTORY)
            return 0
        log("adding {} to the running lab".format(", ".join(new)))
    else:
        if state or existing_netns() or link_exists(BRIDGE):
            log("removing a stale or different lab first")
            teardown(purge=False)
        for d in (LAB_ROOT, SHARED_DIR, IMAGES_DIR, LOCKSPACE_DIR, HOSTS_DIR, CACHE_DIR):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        state = {"hosts": {}, "bridge": BRIDGE, "lock_manager": lock_manager}
        kvm_prepare(state)
        if lock_manager == "sanlock":
            state["sanlock"] = prepare_sanlock()
        new = names
    state.update(names=names, unlocked=unlocked)
    save_state(state)
    # every host learns every host's name and key; the running ones see the rewritten files
    # at once (their /etc/hosts and known_hosts are bind mounts of these very files)
    ensure_ssh_material(names)
    for n in names:
        if n not in new:
            write(os.path.join(host_dir(n), "etc-hosts"), etc_hosts(names, n))
    create_network(new)
    for n in new:
        prepare_host_tree(n, names, str(uuid.uuid4()), locked=n not in unlocked, lock_manager=lock_manager)
        with open(os.path.join(host_dir(n), "etc-libvirt", "libvirtd.conf")) as fh:
            host_uuid = fh.read().split('host_uuid = "')[1].split('"')[0]
        state["hosts"][n] = {"host_uuid": host_uuid, "address": host_addr(n)}
        start_host(state, n)
    if lock_manager == "sanlock":
        # each host's libvirtd joins the disk lockspace itself as its QEMU driver starts; the VM
        # lockspace is the lab's: every new host joins it now, all at once (~20 s each)
        join_vm_lockspace(state, [n for n in new if n not in unlocked])
    for n in new:
        wait_libvirt(state, n)
        wait_ssh(n)
    write_inventory(names, unlocked, lock_manager)
    st = gather_status()
    if not st["up"]:
        cmd_status(argparse.Namespace(json=False))
        raise SystemExit("lab: hosts came up unhealthy")
    log("up: {} ({})".format(", ".join(names), st["accel"]))
    print(INVENTORY)
    return 0


def extends(state, names, unlocked, lock_manager="lockd"):
    """Whether the running lab is this one, or a part of it that more hosts can join."""
    old_names, old_unlocked = state.get("names", []), state.get("unlocked", [])
    return (
        state.get("lock_manager", "lockd") == lock_manager
        and set(old_names) <= set(names)
        and all((n in unlocked) == (n in old_unlocked) for n in old_names)
    )


def sanlock_lockspace_file(path, size=1024 * 1024):
    """An empty lockspace or lease file of ``size`` bytes (sanlock writes into it, it never creates it)."""
    with open(path, "wb") as fh:
        fh.truncate(size)
    os.chmod(path, 0o600)


def prepare_sanlock():
    """Build the setrlimit shim and initialise the lab's two lockspaces on the shared directory.

    The disk lockspace is initialised here, before any host starts, so that two libvirtds
    starting at once never race to create and initialise it (libvirt's plugin only initialises
    a lockspace file that it created itself)."""
    shim = build_sanlock_shim()
    for d in (SANLOCK_DIR, SANLOCK_VM_DIR):
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
    disk_ls = os.path.join(SANLOCK_DIR, DISK_LOCKSPACE)
    for ls_name, path in ((DISK_LOCKSPACE, disk_ls), (VM_LOCKSPACE, VM_LOCKSPACE_FILE)):
        sanlock_lockspace_file(path)
        run(["sanlock", "direct", "init", "-s", "{}:0:{}:0".format(ls_name, path)])
    return {
        "shim": shim,
        "disk_lease_dir": SANLOCK_DIR,
        "disk_lockspace": "{}:{}".format(DISK_LOCKSPACE, disk_ls),
        "vm_lockspace": "{}:{}".format(VM_LOCKSPACE, VM_LOCKSPACE_FILE),
        "vm_lease_dir": SANLOCK_VM_DIR,
        "watchdog": False,
    }


def join_vm_lockspace(state, names):
    """``sanlock client add_lockspace`` of the VM lockspace on every host in ``names``, in parallel."""
    procs = {}
    env_argv = ["env", "-i", "HOME=/root", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
    for n in names:
        spec = "{}:{}:{}:0".format(VM_LOCKSPACE, sanlock_host_id(n), VM_LOCKSPACE_FILE)
        argv = nsenter(state["hosts"][n]["anchor"], env_argv + ["sanlock", "client", "add_lockspace", "-s", spec])
        procs[n] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    failed = []
    for n, proc in procs.items():
        try:
            out, _err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _err = proc.communicate()
        if proc.returncode != 0:
            failed.append("{}: {}".format(n, out.strip()))
    if failed:
        raise SystemExit("lab: joining sanlock lockspace {} failed:\n{}".format(VM_LOCKSPACE, "\n".join(failed)))


def kill_pids(pids, grace=5.0):
    pids = [p for p in pids if p != os.getpid() and pid_alive(p)]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    for p in pids:
        if pid_alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def teardown(purge):
    state = load_state() or {}
    namespaces = set(existing_netns())
    for n in state.get("names", []):
        namespaces.add(netns_name(n))
    # Every process in a lab namespace is the lab's: its daemons, their QEMU guests and
    # dnsmasq, SSH sessions.  Stop guests first, so virtlockd releases their leases last.
    for ns in sorted(namespaces):
        res = run(["ip", "netns", "pids", ns], check=False)
        pids = [int(p) for p in res.stdout.split()] if res.returncode == 0 else []
        recorded = set()
        info = state.get("hosts", {}).get(ns[len(NETNS_PREFIX) :], {})
        recorded.update(info.get("pids", {}).values())
        if info.get("anchor"):
            recorded.add(info["anchor"])
        # sanlock's helper process is the daemon's own child: it goes with the daemon, not before it
        sanlock_pid = info.get("pids", {}).get("sanlock")
        helpers = [p for p in pids if sanlock_pid and parent_pid(p) == sanlock_pid]
        guests = [p for p in pids if p not in recorded and p not in helpers]
        kill_pids(guests)
        if sanlock_pid and pid_alive(sanlock_pid) and info.get("anchor") and pid_alive(info["anchor"]):
            # leave its lockspaces (the guests holding leases are gone), then it is stopped by pid below
            shutdown = ["sanlock", "client", "shutdown", "-f", "1"]
            host_run(state, ns[len(NETNS_PREFIX) :], shutdown, check=False, timeout=30)
        kill_pids([p for p in pids if p in recorded and p != info.get("anchor")] + helpers)
        kill_pids([p for p in recorded if p and pid_alive(p)])
        run(["ip", "netns", "del", ns], check=False)
    for n in state.get("names", []):
        if link_exists(VETH_PREFIX + n):
            run(["ip", "link", "del", VETH_PREFIX + n], check=False)
    if link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE], check=False)
    kvm_restore(state)
    if os.path.isdir(LAB_ROOT):
        for entry in os.listdir(LAB_ROOT):
            if entry == "cache" and not purge:
                continue
            path = os.path.join(LAB_ROOT, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        if purge or not os.listdir(LAB_ROOT):
            shutil.rmtree(LAB_ROOT, ignore_errors=True)


def cmd_down(args):
    if os.geteuid() != 0:
        raise SystemExit("lab: must run as root")
    teardown(purge=args.purge)
    log("down")
    return 0


def cmd_inventory(_args):
    state = load_state()
    if not state:
        raise SystemExit("lab: the lab is down; run `tests/lab/lab up` first")
    write_inventory(state["names"], state.get("unlocked", []), state.get("lock_manager", "lockd"))
    print(INVENTORY)
    return 0


def cmd_restart(args):
    """Stop one daemon of a host (if it still runs) and start it again, as a crashed daemon is."""
    state = load_state()
    if not state or args.host not in state.get("hosts", {}):
        raise SystemExit("lab: no such lab host: {}".format(args.host))
    info = state["hosts"][args.host]
    old = info.get("pids", {}).get(args.daemon)
    if old:
        kill_pids([old])
    # the host's /run, seen through its anchor
    pidfile = "/proc/{}/root/run/{}.pid".format(info["anchor"], args.daemon)
    if os.path.exists(pidfile):
        os.unlink(pidfile)
    host_run(state, args.host, [a.format(hdir=host_dir(args.host)) for a in DAEMON_COMMANDS[args.daemon]])
    pid = wait_pidfile(pidfile)
    if pid is None:
        raise SystemExit("lab: {} on {} did not start again".format(args.daemon, args.host))
    info.setdefault("pids", {})[args.daemon] = pid
    save_state(state)
    if args.daemon == "libvirtd":
        wait_libvirt(state, args.host)
    log("{} on {} restarted (pid {})".format(args.daemon, args.host, pid))
    return 0


def cmd_image(args):
    """Build (or reuse) the lab's Linux guest image; prints its directory."""
    argv = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest_image.py")]
    if args.force:
        argv.append("--force")
    return subprocess.run(argv, check=False).returncode


def cmd_exec(args):
    state = load_state()
    if not state or args.host not in state.get("hosts", {}):
        raise SystemExit("lab: no such lab host: {}".format(args.host))
    argv = args.argv[1:] if args.argv and args.argv[0] == "--" else args.argv
    if not argv:
        raise SystemExit("lab: exec needs a command")
    os.execvp("nsenter", host_argv(state["hosts"][args.host]["anchor"], argv))
    return 0


def main():
    parser = argparse.ArgumentParser(
        prog="lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("deps").set_defaults(func=cmd_deps)
    p = sub.add_parser("up")
    p.add_argument("--hosts", type=int, default=int(os.environ.get("LOCKSTEP_LAB_HOSTS", "2")))
    p.add_argument(
        "--unlocked",
        type=int,
        default=int(os.environ.get("LOCKSTEP_LAB_UNLOCKED", "0")),
        help="extra hosts with no lock manager (inventory group unlocked_hypervisors)",
    )
    p.add_argument(
        "--lock-manager",
        choices=LOCK_MANAGERS,
        default=os.environ.get("LOCKSTEP_LAB_LOCK_MANAGER", "lockd") or "lockd",
        help="the locked hosts' lock manager: lockd (virtlockd, the default) or sanlock "
        "(a sanlock daemon per host, no watchdog: see docs/guides/running-the-lab.md)",
    )
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down")
    p.add_argument("--purge", action="store_true", help="also remove the image cache")
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    sub.add_parser("inventory").set_defaults(func=cmd_inventory)
    p = sub.add_parser("restart", help="stop a host's daemon if it runs, and start it again")
    p.add_argument("host")
    p.add_argument("daemon", choices=DAEMONS)
    p.set_defaults(func=cmd_restart)
    p = sub.add_parser("image", help="build the Linux guest image (cached)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_image)
    p = sub.add_parser("exec")
    p.add_argument("host")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec)
    if len(sys.argv) == 3 and sys.argv[1] == "_anchor":
        return anchor_main(sys.argv[2])
    args = parser.parse_args()
    if args.cmd == "up" and not (1 <= args.hosts and 0 <= args.unlocked and args.hosts + args.unlocked <= 9):
        parser.error("--hosts must be at least 1, --unlocked at least 0, and 9 hosts at most in all")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
