# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
name: libvirt
short_description: libvirt guests of hypervisors reached over SSH, managed through their guest agent
description:
  - Lists the guests (domains) of the given hypervisors. The controller reaches each hypervisor over SSH with
    paramiko and runs C(virsh) there; no libvirt bindings are needed on the controller. The hypervisors are read
    in parallel (O(concurrency)).
  - A guest that has a guest agent channel (C(org.qemu.guest_agent.0)) gets
    C(ansible_connection=lockstep.virt.guest_agent) and the variables of that connection (hypervisor address, port,
    user, key, known_hosts, libvirt URI, domain name), so a play reaches it through its QEMU guest agent with no
    further setup (O(agent_connection)). A guest without the channel (listed when O(require_agent_channel=false))
    gets no connection variables; with O(ansible_host_from) it is reached at its address with Ansible's default
    connection.
  - O(ansible_host_from) sets C(ansible_host) from the guest's addresses, as its guest agent reports them or as the
    DHCP leases of libvirt's networks on the hypervisor have them.
  - The result can be cached with Ansible's inventory cache (O(cache)); a cached inventory makes no SSH connection.
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
  - inventory_cache
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
  agent_connection:
    description:
      - If V(true), a guest with a guest agent channel gets C(ansible_connection=lockstep.virt.guest_agent) and the
        C(guest_agent_*) variables of that connection; a guest without the channel never does.
      - If V(false), no guest gets them; use O(ansible_host_from) (or O(compose)) to reach the guests in another way.
    type: bool
    default: true
    version_added: 0.2.0
  ansible_host_from:
    description:
      - Where to read a running guest's addresses, in order of preference, to set C(ansible_host) to the first
        that fits O(address_family). V(agent) - the guest agent (C(virsh domifaddr --source agent)); V(lease) -
        the DHCP leases of libvirt's networks on the hypervisor (C(virsh domifaddr --source lease)).
      - Loopback, link-local and unspecified addresses are never chosen. A guest with no such address gets no
        C(ansible_host). The addresses read are in C(libvirt_addresses).
      - An empty list (the default) reads no address and sets no C(ansible_host).
    type: list
    elements: str
    choices: [agent, lease]
    default: []
    version_added: 0.2.0
  address_family:
    description:
      - Which addresses O(ansible_host_from) may choose. V(any) prefers IPv4 and takes IPv6 when there is no IPv4
        address.
    type: str
    choices: [ipv4, ipv6, any]
    default: ipv4
    version_added: 0.2.0
  concurrency:
    description: At most this many hypervisors are read at the same time (one thread and one SSH connection each).
    type: int
    default: 8
    version_added: 0.2.0
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
    sees the channel, for running guests), C(libvirt_agent_channel) (whether the guest has one), and, for a guest
    with the channel (O(agent_connection)), the C(guest_agent_*) variables of the connection.
  - With O(ansible_host_from), a running guest's addresses are in C(libvirt_addresses), a list of C(interface),
    C(mac), C(family) (C(ipv4) or C(ipv6)), C(address), C(prefix) and C(source) (C(agent) or C(lease)).
  - With O(cache), the guests and their addresses are read from the cache while it is valid; C(--flush-cache)
    (or O(cache_timeout)) makes the next run read the hypervisors again.
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
---
# guests with and without an agent channel, reached at their addresses where they have no channel,
# the listing cached for ten minutes in a JSON file
plugin: lockstep.virt.libvirt
hypervisors: [hv1.example.org, hv2.example.org, hv3.example.org]
require_agent_channel: false
ansible_host_from: [agent, lease]
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/lockstep-virt-inventory
cache_timeout: 600
"""

import ipaddress
import re
import shlex
from concurrent.futures import ThreadPoolExecutor

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

from ansible_collections.lockstep.virt.plugins.module_utils._virt.addresses import usable
from ansible_collections.lockstep.virt.plugins.plugin_utils._agent_ssh import (
    close_all,
    hypervisor,
    list_domains_command,
    parse_domain_listing,
)

_ADDR_MARK = "@@lockstep-virt-addresses@@"
ADDRESS_SOURCES = ("agent", "lease")


def addresses_command(uri, names, sources):
    """One shell command printing, per guest and source, a marker line and `virsh domifaddr --full`'s table."""
    quri = shlex.quote(uri or "qemu:///system")
    parts = []
    for name in names:
        for source in sources:
            if source not in ADDRESS_SOURCES:
                raise ValueError("unknown address source {!r}".format(source))
            parts.append(
                "printf '%s %s %s\\n' '{mark}' {source} {qname}; "
                "virsh -q -c {uri} domifaddr --full --source {source} {qname} 2>/dev/null || true".format(
                    mark=_ADDR_MARK, source=source, qname=shlex.quote(name), uri=quri
                )
            )
    return "; ".join(parts)


def parse_addresses(text):
    """{guest name: [address, ...]} from addresses_command()'s output, in the order virsh printed them."""
    found = {}
    current = None
    for line in text.splitlines():
        if line.startswith(_ADDR_MARK + " "):
            _mark, source, name = line.split(" ", 2)
            current = (name, source)
            found.setdefault(name, [])
            continue
        fields = line.split()
        if current is None or len(fields) != 4 or fields[0] == "Name" or set(line.strip()) <= {"-"}:
            continue
        interface, mac, family, cidr = fields
        if family not in ("ipv4", "ipv6"):
            continue
        address, _sep, prefix = cidr.partition("/")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            continue
        found[current[0]].append(
            {
                "interface": interface,
                "mac": None if mac == "-" else mac,
                "family": family,
                "address": address,
                "prefix": int(prefix) if prefix.isdigit() else None,
                "source": current[1],
            }
        )
    return found


def choose_address(addresses, sources, family="ipv4"):
    """The address for ansible_host: by source in the order given, then IPv4 before IPv6 (family=any)."""
    families = {"ipv4": ["ipv4"], "ipv6": ["ipv6"], "any": ["ipv4", "ipv6"]}[family]
    for source in sources:
        for fam in families:
            for entry in addresses:
                if entry["source"] != source or entry["family"] != fam:
                    continue
                if usable(entry):
                    return entry["address"]
    return None


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "lockstep.virt.libvirt"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("libvirt.yml", "libvirt.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        hypervisors = [self._hypervisor(item) for item in self.get_option("hypervisors") or []]
        if not hypervisors:
            raise AnsibleParserError("{}: no hypervisors given".format(path))
        names = [hv["name"] for hv in hypervisors]
        if len(set(names)) != len(names):
            raise AnsibleParserError("{}: two hypervisors have the same name".format(path))
        self._sources = list(self.get_option("ansible_host_from") or [])
        self._wanted_states = {s.replace(" ", "_") for s in self.get_option("states") or []}
        self._patterns = [re.compile(p) for p in self.get_option("name_patterns") or []]

        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache")
        read_cache = use_cache and cache
        update_cache = use_cache and not cache
        listing = None
        if read_cache:
            try:
                listing = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if not isinstance(listing, dict):
            listing = self._read_hypervisors(hypervisors)
        if update_cache:
            self._cache[cache_key] = listing

        seen = {}
        for hv in hypervisors:
            for guest in listing.get(hv["name"]) or []:
                previous = seen.get(guest["name"])
                if previous and (previous["state"] == "running" or guest["state"] != "running"):
                    continue
                seen[guest["name"]] = dict(guest, hypervisor=hv)
        for name, guest in seen.items():
            self._add(name, guest)

    def _read_hypervisors(self, hypervisors):
        """{hypervisor name: [guest, ...]} read from every hypervisor, several at once."""
        workers = max(1, min(int(self.get_option("concurrency") or 1), len(hypervisors)))
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="libvirt-inventory") as pool:
                futures = [(hv, pool.submit(self._guests, hv)) for hv in hypervisors]
                outcomes = []
                for hv, future in futures:
                    try:
                        outcomes.append((hv, future.result(), None))
                    except (AnsibleConnectionFailure, AnsibleError) as exc:
                        outcomes.append((hv, None, exc))
        finally:
            close_all()  # Ansible's workers are forked: they open connections of their own
        listing = {}
        for hv, guests, exc in outcomes:  # in the order the hypervisors are listed
            if exc is not None:
                if self.get_option("strict_hypervisors"):
                    raise AnsibleParserError("hypervisor {}: {}".format(hv["name"], exc)) from exc
                self.display.warning("lockstep.virt.libvirt: skipping hypervisor {}: {}".format(hv["name"], exc))
                continue
            listing[hv["name"]] = guests
        return listing

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

    def _wanted(self, guest):
        if self._wanted_states and guest["state"] not in self._wanted_states:
            return False
        if self._patterns and not any(p.match(guest["name"]) for p in self._patterns):
            return False
        return bool(guest["agent_channel"] or not self.get_option("require_agent_channel"))

    def _guests(self, hv):
        """The wanted guests of one hypervisor, with their addresses when asked (runs in a worker thread)."""
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
        guests = [g for g in parse_domain_listing(out.decode("utf-8", "replace")) if self._wanted(g)]
        running = [g["name"] for g in guests if g["state"] == "running"]
        if self._sources and running:
            rc, out, err = ssh.run(addresses_command(hv["uri"], running, self._sources), timeout=120)
            if rc != 0:
                raise AnsibleError(
                    "virsh domifaddr on {} failed ({}): {}".format(ssh.label, rc, err.decode("utf-8", "replace"))
                )
            addresses = parse_addresses(out.decode("utf-8", "replace"))
            for guest in guests:
                if guest["name"] in addresses:
                    guest["addresses"] = addresses[guest["name"]]
        return guests

    def _add(self, name, guest):
        hv = guest["hypervisor"]
        host = self.inventory.add_host(name)
        state_group = self.inventory.add_group("libvirt_state_" + self._sanitize(guest["state"]))
        hv_group = self.inventory.add_group("libvirt_hypervisor_" + self._sanitize(hv["name"]))
        self.inventory.add_child(state_group, host)
        self.inventory.add_child(hv_group, host)
        hostvars = {
            "libvirt_hypervisor": hv["name"],
            "libvirt_state": guest["state"],
            "libvirt_uuid": guest["uuid"],
            "libvirt_memory_mib": guest["memory_mib"],
            "libvirt_vcpus": guest["vcpus"],
            "libvirt_agent_state": guest["agent_state"],
            "libvirt_agent_channel": guest["agent_channel"],
        }
        if guest["agent_channel"] and self.get_option("agent_connection"):
            hostvars.update(
                {
                    "ansible_connection": "lockstep.virt.guest_agent",
                    "guest_agent_hypervisor_host": hv["host"],
                    "guest_agent_hypervisor_port": hv["port"],
                    "guest_agent_hypervisor_user": hv["user"],
                    "guest_agent_libvirt_uri": hv["uri"],
                    "guest_agent_domain": guest["name"],
                    "guest_agent_host_key_checking": self.get_option("host_key_checking"),
                }
            )
            if hv["private_key_file"]:
                hostvars["guest_agent_hypervisor_private_key_file"] = hv["private_key_file"]
            if self.get_option("known_hosts_file"):
                hostvars["guest_agent_known_hosts_file"] = self.get_option("known_hosts_file")
        if self._sources:
            addresses = guest.get("addresses") or []
            hostvars["libvirt_addresses"] = addresses
            address = choose_address(addresses, self._sources, self.get_option("address_family"))
            if address:
                hostvars["ansible_host"] = address
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
