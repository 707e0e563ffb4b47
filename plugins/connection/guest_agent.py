# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
name: guest_agent
short_description: Run tasks in a libvirt guest through its QEMU guest agent, reached over SSH to the hypervisor
description:
  - Manages a libvirt guest that has no network, or is not configured yet, through the QEMU guest agent
    (C(qemu-ga)) running inside it.
  - The controller opens an SSH connection to the guest's hypervisor with paramiko (no OpenSSH client and no
    libvirt bindings needed on the controller) and runs C(virsh qemu-agent-command) there. Commands run in the
    guest with C(guest-exec) (output captured, standard input passed as C(input-data)), and
    C(guest-exec-status) is polled with a bounded back-off. Files are copied with
    C(guest-file-open)/C(guest-file-read)/C(guest-file-write)/C(guest-file-close) in chunks, streamed from and
    to disk on the controller.
  - Commands run as the user C(qemu-ga) runs as, normally root; O(ansible.builtin.ssh#connection:remote_user)
    is not used for the guest.
  - One SSH connection per hypervisor (host, port, user and keys) is opened per Ansible worker process and
    reused by every command and file transfer of the guests on it.
  - The P(lockstep.virt.libvirt#inventory) inventory plugin sets every option of this plugin for the guests it finds.
author:
  - lockstep.virt contributors (@lockstep)
version_added: 0.1.0
requirements:
  - paramiko (Python library) on the controller
  - virsh (libvirt client tools) on the hypervisor
  - the QEMU guest agent running in the guest, with a virtio-serial channel named C(org.qemu.guest_agent.0),
    and C(guest-exec) and C(guest-file-*) not disabled in its configuration
  - C(/bin/sh) in the guest
options:
  domain:
    description:
      - Name (or UUID) of the libvirt domain on the hypervisor.
      - Defaults to the inventory name of the host.
    type: str
    vars:
      - name: inventory_hostname
      - name: guest_agent_domain
    env:
      - name: LOCKSTEP_VIRT_GUEST_DOMAIN
  hypervisor_host:
    description:
      - Address or name of the hypervisor that runs the guest. Required.
    type: str
    vars:
      - name: guest_agent_hypervisor_host
    env:
      - name: LOCKSTEP_VIRT_HYPERVISOR_HOST
    ini:
      - section: lockstep_guest_agent
        key: hypervisor_host
  hypervisor_port:
    description:
      - SSH port of the hypervisor.
    type: int
    default: 22
    vars:
      - name: guest_agent_hypervisor_port
    env:
      - name: LOCKSTEP_VIRT_HYPERVISOR_PORT
    ini:
      - section: lockstep_guest_agent
        key: hypervisor_port
  hypervisor_user:
    description:
      - User to log in as on the hypervisor. It needs to be allowed to use the libvirt URI O(libvirt_uri).
    type: str
    default: root
    vars:
      - name: guest_agent_hypervisor_user
    env:
      - name: LOCKSTEP_VIRT_HYPERVISOR_USER
    ini:
      - section: lockstep_guest_agent
        key: hypervisor_user
  hypervisor_private_key_file:
    description:
      - Private key file for SSH to the hypervisor. If neither a key file nor a password is set, the keys of
        the SSH agent and the default key files in C(~/.ssh) are tried.
    type: path
    vars:
      - name: guest_agent_hypervisor_private_key_file
    env:
      - name: LOCKSTEP_VIRT_HYPERVISOR_PRIVATE_KEY_FILE
    ini:
      - section: lockstep_guest_agent
        key: hypervisor_private_key_file
  hypervisor_password:
    description:
      - Password for SSH to the hypervisor (or the passphrase of O(hypervisor_private_key_file)).
      - It is never logged nor shown in error messages. Prefer a key, or keep the password in Ansible Vault.
    type: str
    vars:
      - name: guest_agent_hypervisor_password
    env:
      - name: LOCKSTEP_VIRT_HYPERVISOR_PASSWORD
  libvirt_uri:
    description:
      - libvirt connection URI on the hypervisor, as given to C(virsh -c).
    type: str
    default: qemu:///system
    vars:
      - name: guest_agent_libvirt_uri
    env:
      - name: LOCKSTEP_VIRT_LIBVIRT_URI
    ini:
      - section: lockstep_guest_agent
        key: libvirt_uri
  known_hosts_file:
    description:
      - known_hosts file with the hypervisor's host key.
      - If not set, C(~/.ssh/known_hosts) and the system's known hosts are used.
    type: path
    vars:
      - name: guest_agent_known_hosts_file
    env:
      - name: LOCKSTEP_VIRT_KNOWN_HOSTS_FILE
    ini:
      - section: lockstep_guest_agent
        key: known_hosts_file
  host_key_checking:
    description:
      - If V(true), a hypervisor whose host key is not in the known hosts is refused.
      - If V(false), an unknown host key is accepted for this run (and not saved). A host key that differs from
        the one recorded for that host is refused either way.
    type: bool
    default: true
    vars:
      - name: guest_agent_host_key_checking
      - name: ansible_host_key_checking
    env:
      - name: LOCKSTEP_VIRT_HOST_KEY_CHECKING
      - name: ANSIBLE_HOST_KEY_CHECKING
    ini:
      - section: lockstep_guest_agent
        key: host_key_checking
      - section: defaults
        key: host_key_checking
  connect_timeout:
    description:
      - Seconds to wait for the SSH connection to the hypervisor, and for the guest agent to answer one request.
    type: int
    default: 10
    vars:
      - name: guest_agent_connect_timeout
    env:
      - name: LOCKSTEP_VIRT_CONNECT_TIMEOUT
    ini:
      - section: lockstep_guest_agent
        key: connect_timeout
  command_timeout:
    description:
      - Seconds a command in the guest may run before the connection gives up on it (the command itself is not
        stopped, the guest agent has no way to do so).
    type: int
    default: 300
    vars:
      - name: guest_agent_command_timeout
    env:
      - name: LOCKSTEP_VIRT_COMMAND_TIMEOUT
    ini:
      - section: lockstep_guest_agent
        key: command_timeout
extends_documentation_fragment:
  - connection_pipelining
notes:
  - Errors of the guest agent (not connected, no C(guest-exec), no answer within the timeouts) and of SSH (unknown
    or changed host key, authentication) fail the task as unreachable, with a message that says which;
    a command that runs and exits non-zero is returned with its exit code.
  - Output of a command is captured by the guest agent and returned when it exits; C(qemu-ga) keeps at most
    16 MiB of each stream.
  - Privilege escalation (become) needs a pseudo-terminal for its password prompt, which C(guest-exec) cannot
    give; C(qemu-ga) normally runs as root, so it is seldom needed.
"""

EXAMPLES = r"""
# inventory (or use the lockstep.virt.libvirt inventory plugin, which sets all of this)
# guests:
#   hosts:
#     web1:
#   vars:
#     ansible_connection: lockstep.virt.guest_agent
#     guest_agent_hypervisor_host: 10.77.0.11
#     guest_agent_hypervisor_private_key_file: ~/.ssh/id_ed25519
#     ansible_python_interpreter: /usr/bin/python3

- name: Configure a guest that has no network yet
  hosts: guests
  gather_facts: false
  tasks:
    - name: Is Python there?
      ansible.builtin.ping:

    - name: Give it an address
      ansible.builtin.copy:
        dest: /etc/network/interfaces.d/eth0
        mode: "0644"
        content: |
          auto eth0
          iface eth0 inet dhcp
"""

import os

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

from ansible_collections.lockstep.virt.plugins.plugin_utils._agent_ssh import (
    AGENT_UNREACHABLE,
    GuestAgent,
    GuestAgentError,
    drop_cached,
    file_chunks,
    hypervisor,
)

display = Display()


class Connection(ConnectionBase):
    """Commands and files in a libvirt guest through its QEMU guest agent."""

    transport = "lockstep.virt.guest_agent"
    has_pipelining = True
    has_tty = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ssh = None
        self._agent = None

    # ---- options
    def _settings(self):
        host = self.get_option("hypervisor_host")
        if not host:
            raise AnsibleConnectionFailure(
                "lockstep.virt.guest_agent: no hypervisor for {}: set guest_agent_hypervisor_host".format(
                    self._play_context.remote_addr
                )
            )
        return {
            "host": host,
            "port": self.get_option("hypervisor_port"),
            "user": self.get_option("hypervisor_user"),
            "key_file": self.get_option("hypervisor_private_key_file"),
            "password": self.get_option("hypervisor_password"),
            "known_hosts_file": self.get_option("known_hosts_file"),
            "host_key_checking": self.get_option("host_key_checking"),
            "connect_timeout": self.get_option("connect_timeout"),
        }

    def _connect(self):
        if self._connected and self._agent is not None:
            return self
        settings = self._settings()
        domain = self.get_option("domain")
        if not domain:
            raise AnsibleConnectionFailure("lockstep.virt.guest_agent: no domain name (guest_agent_domain)")
        self._ssh = hypervisor(**settings)
        self._agent = GuestAgent(
            self._ssh,
            domain,
            uri=self.get_option("libvirt_uri"),
            where="hypervisor {}".format(self._ssh.label),
            command_timeout=self.get_option("command_timeout"),
        )
        display.vvv(
            "GUEST_AGENT: domain {} through {} ({})".format(domain, self._ssh.label, self.get_option("libvirt_uri")),
            host=domain,
        )
        self._connected = True
        return self

    # ---- commands
    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        self._connect()
        display.vvv("EXEC {}".format(cmd), host=self._agent.domain)
        try:
            return self._agent.execute(["/bin/sh", "-c", to_text(cmd)], stdin=to_bytes(in_data) if in_data else None)
        except GuestAgentError:
            raise
        except AnsibleConnectionFailure:  # the SSH connection broke: open a new one next time
            self._forget_ssh()
            raise

    # ---- files
    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        self._connect()
        display.vvv("PUT {} TO {}".format(in_path, out_path), host=self._agent.domain)
        if not os.path.exists(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound("file or module does not exist: {}".format(in_path))
        try:
            self._agent.write_file(out_path, file_chunks(to_bytes(in_path, errors="surrogate_or_strict")))
        except AGENT_UNREACHABLE:
            raise
        except GuestAgentError as exc:
            raise AnsibleError("failed to copy {} to {} in the guest: {}".format(in_path, out_path, exc)) from exc

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        self._connect()
        display.vvv("FETCH {} TO {}".format(in_path, out_path), host=self._agent.domain)
        b_out = to_bytes(out_path, errors="surrogate_or_strict")
        tmp = b_out + b".part"
        try:
            with open(tmp, "wb") as fh:
                for chunk in self._agent.read_file(in_path):
                    fh.write(chunk)
            os.replace(tmp, b_out)
        except AGENT_UNREACHABLE:
            raise
        except GuestAgentError as exc:
            raise AnsibleError("failed to fetch {} from the guest: {}".format(in_path, exc)) from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # ---- lifecycle
    def _forget_ssh(self):
        if self._ssh is not None:
            drop_cached(self._ssh)
        self._ssh = None
        self._agent = None
        self._connected = False

    def reset(self):
        self._forget_ssh()

    def close(self):
        # the SSH connection stays cached for the other guests and tasks of this process
        self._agent = None
        self._connected = False
