# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    # Options shared by every module that talks to libvirt, and their requirements.
    DOCUMENTATION = r"""
options:
  uri:
    description:
      - libvirt connection URI of the hypervisor, as seen from the managed host.
      - The module runs on the managed host, so the default C(qemu:///system) is that host's own
        system daemon. A remote URI (for example C(qemu+ssh://root@hv2/system)) works for libvirt calls,
        but leases can only be probed on the host whose files they are; they are then reported as unknown.
      - If not set, the environment variable E(LIBVIRT_DEFAULT_URI) on the managed host is used, then
        C(qemu:///system).
    type: str
requirements:
  - python >= 3.9 on the managed host
  - libvirt-python (Debian/Ubuntu C(python3-libvirt), Fedora/RHEL C(python3-libvirt)) on the managed host
  - lxml (C(python3-lxml)) on the managed host
notes:
  - One libvirt connection is opened per task and closed at its end.
  - Every libvirt error is reported with its code, domain and message in C(libvirt_error).
"""
