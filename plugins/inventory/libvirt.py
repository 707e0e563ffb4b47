# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
name: libvirt
short_description: libvirt guests of hypervisors reached over SSH, managed through their guest agent
description:
  - Lists the guests (domains) of the given hypervisors. The controller reaches each hypervisor over SSH with
    paramiko and runs C(virsh) there; no libvirt bindings are needed on the controller.
  - Every guest gets C(ansible_connection=lockstep.virt.guest_agent) and the variables of that connection
    (hypervisor address, port, user, key, known_hosts, libvirt URI, domain name), so a play reaches it through its
    QEMU guest agent with no further setup.
  - Groups C(libvirt_state_<state>) (for example C(libvirt_state_running), C(libvirt_state_shut_off)) and
    C(libvirt_hypervisor_<name>), plus the groups of O(groups) and O(keyed_groups).
  - The configuration file name must end in C(libvirt.yml) or C(libvirt.yaml).
author:
  - lockstep.virt contributors (@lockstep)
version_added: 0.1.0
requirements:
  - paramiko (Python library) on the controller
  - virsh on the hypervisors
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: The name of this plugin; it makes the file a configuration of this plugin.
    type: str
    required: true
    choices: [lockstep.virt.libvirt]
  hypervisors:
    description:
      - The hypervisors to list. Each item is an address or name, or a mapping with C(host) (required), C(name)
        (the name used in groups and in C(libvirt_hypervisor); default the host), and any of C(port), C(user),
        C(private_key_file), C(uri) to override the settings below for that hypervisor.
    type: list
    elements: raw
    required: true
  user:
    description: User for SSH to the hypervisors.
    type: str
    default: root
  port:
    description: SSH port of the hypervisors.
    type: int
    default: 22
  private_key_file:
    description: Private key for SSH to the hypervisors; if not set, the SSH agent and the default keys are used.
    type: path
  known_hosts_file:
    description: known_hosts file with the hypervisors' host keys; if not set, C(~/.ssh/known_hosts).
    type: path
  host_key_checking:
    description:
      - If V(true), a hypervisor whose host key is not known is refused. A changed host key is always refused.
      - Passed on to the guests' connection as C(guest_agent_host_key_checking).
    type: bool
    default: true
  uri:
    description: libvirt URI on the hypervisors.
    type: str
    default: qemu:///system
  connect_timeout:
    description: Seconds to wait for SSH to a hypervisor.
    type: int
    default: 10
  states:
    description:
      - Only guests in these states are listed (V(running), V(paused), V(shut_off), V(crashed), V(pmsuspended),
        V(in_shutdown), V(blocked), V(idle)). An empty list lists every guest.
    type: list
    elements: str
    default: [running]
  require_agent_channel:
    description:
      - List only guests that have a guest agent channel (C(org.qemu.guest_agent.0)) in their configuration, the
        ones the guest_agent connection can manage.
    type: bool
    default: true
  name_patterns:
    description:
      - Only guests whose name matches one of these regular expressions (matched from the start of the name) are
        listed. An empty list lists every guest.
    type: list
    elements: str
    default: []
  strict_hypervisors:
    description:
      - If V(true), a hypervisor that cannot be reached fails the inventory. If V(false), it is skipped with a
        warning and its guests are missing.
    type: bool
    default: true
notes:
  - A guest defined on two hypervisors (for example after a migration that kept the source definition) is listed
    once, from the hypervisor where it is running if there is one, else from the first hypervisor listed.
  - Host variables set for every guest - C(libvirt_hypervisor), C(libvirt_state), C(libvirt_uuid),
    C(libvirt_memory_mib), C(libvirt_vcpus), C(libvirt_agent_state) (C(connected) or C(disconnected) as libvirt
    sees the channel, for running guests), and the C(guest_agent_*) variables of the connection.
"""

EXAMPLES = r"""
# lab_guests.libvirt.yml
plugin: lockstep.virt.libvirt
hypervisors:
  - name: hv1
    host: 10.77.0.11
  - name: hv2
    host: 10.77.0.12
private_key_file: /var/lib/lockstep-lab/ssh/id_ed25519
known_hosts_file: /var/lib/lockstep-lab/ssh/known_hosts
compose:
  ansible_python_interpreter: "'/usr/bin/python3'"
keyed_groups:
  - key: libvirt_agent_state | default('none')
    prefix: agent

# then: ansible -i lab_guests.libvirt.yml all -m ansible.builtin.ping
---
# every guest, whatever its state, whose name starts with web
plugin: lockstep.virt.libvirt
hypervisors: [hv1.example.org, hv2.example.org]
states: []
name_patterns: ["web"]
"""

import re

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

from ansible_collections.lockstep.virt.plugins.plugin_utils._agent_ssh import (
    close_all,
    hypervisor,
    list_domains_command,
    parse_domain_listing,
)


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "lockstep.virt.libvirt"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("libvirt.yml", "libvirt.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        hypervisors = [self._hypervisor(item) for item in self.get_option("hypervisors") or []]
        if not hypervisors:
            raise AnsibleParserError("{}: no hypervisors given".format(path))
        wanted_states = {s.replace(" ", "_") for s in self.get_option("states") or []}
        patterns = [re.compile(p) for p in self.get_option("name_patterns") or []]
        seen = {}
        for hv in hypervisors:
            try:
                guests = self._guests(hv)
            except (AnsibleConnectionFailure, AnsibleError) as exc:
                if self.get_option("strict_hypervisors"):
                    raise AnsibleParserError("hypervisor {}: {}".format(hv["name"], exc)) from exc
                self.display.warning("lockstep.virt.libvirt: skipping hypervisor {}: {}".format(hv["name"], exc))
                continue
            for guest in guests:
                if wanted_states and guest["state"] not in wanted_states:
                    continue
                if patterns and not any(p.match(guest["name"]) for p in patterns):
                    continue
                if self.get_option("require_agent_channel") and not guest["agent_channel"]:
                    continue
                previous = seen.get(guest["name"])
                if previous and (previous["state"] == "running" or guest["state"] != "running"):
                    continue
                seen[guest["name"]] = dict(guest, hypervisor=hv)
        close_all()  # Ansible's workers are forked: they open connections of their own
        for name, guest in seen.items():
            self._add(name, guest)

    def _hypervisor(self, item):
        if isinstance(item, str):
            item = {"host": item}
        if not isinstance(item, dict) or not item.get("host"):
            raise AnsibleParserError("each hypervisor needs a host: {!r}".format(item))
        unknown = set(item) - {"host", "name", "port", "user", "private_key_file", "uri"}
        if unknown:
            raise AnsibleParserError("unknown hypervisor keys: {}".format(", ".join(sorted(unknown))))
        return {
            "name": str(item.get("name") or item["host"]),
            "host": str(item["host"]),
            "port": int(item.get("port") or self.get_option("port")),
            "user": item.get("user") or self.get_option("user"),
            "private_key_file": item.get("private_key_file") or self.get_option("private_key_file"),
            "uri": item.get("uri") or self.get_option("uri"),
        }

    def _guests(self, hv):
        ssh = hypervisor(
            hv["host"],
            port=hv["port"],
            user=hv["user"],
            key_file=hv["private_key_file"],
            known_hosts_file=self.get_option("known_hosts_file"),
            host_key_checking=self.get_option("host_key_checking"),
            connect_timeout=self.get_option("connect_timeout"),
        )
        rc, out, err = ssh.run(list_domains_command(hv["uri"]), timeout=120)
        if rc != 0:
            raise AnsibleError("virsh on {} failed ({}): {}".format(ssh.label, rc, err.decode("utf-8", "replace")))
        return parse_domain_listing(out.decode("utf-8", "replace"))

    def _add(self, name, guest):
        hv = guest["hypervisor"]
        host = self.inventory.add_host(name)
        state_group = self.inventory.add_group("libvirt_state_" + self._sanitize(guest["state"]))
        hv_group = self.inventory.add_group("libvirt_hypervisor_" + self._sanitize(hv["name"]))
        self.inventory.add_child(state_group, host)
        self.inventory.add_child(hv_group, host)
        hostvars = {
            "ansible_connection": "lockstep.virt.guest_agent",
            "guest_agent_hypervisor_host": hv["host"],
            "guest_agent_hypervisor_port": hv["port"],
            "guest_agent_hypervisor_user": hv["user"],
            "guest_agent_libvirt_uri": hv["uri"],
            "guest_agent_domain": guest["name"],
            "guest_agent_host_key_checking": self.get_option("host_key_checking"),
            "libvirt_hypervisor": hv["name"],
            "libvirt_state": guest["state"],
            "libvirt_uuid": guest["uuid"],
            "libvirt_memory_mib": guest["memory_mib"],
            "libvirt_vcpus": guest["vcpus"],
            "libvirt_agent_state": guest["agent_state"],
        }
        if hv["private_key_file"]:
            hostvars["guest_agent_hypervisor_private_key_file"] = hv["private_key_file"]
        if self.get_option("known_hosts_file"):
            hostvars["guest_agent_known_hosts_file"] = self.get_option("known_hosts_file")
        for key, value in hostvars.items():
            self.inventory.set_variable(host, key, value)
        strict = self.get_option("strict")
        variables = self.inventory.get_host(host).get_vars()
        self._set_composite_vars(self.get_option("compose"), variables, host, strict=strict)
        self._add_host_to_composed_groups(self.get_option("groups"), variables, host, strict=strict)
        self._add_host_to_keyed_groups(self.get_option("keyed_groups"), variables, host, strict=strict)

    @staticmethod
    def _sanitize(text):
        return re.sub(r"[^A-Za-z0-9_]", "_", text)
