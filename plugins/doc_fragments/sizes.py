# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    # How every option that takes a size reads it (one parser: module_utils/_virt/units.py).
    DOCUMENTATION = r"""
options: {}
notes:
  - "Sizes: an option that takes a size accepts a number or a string of a number and a unit, with or without
    a space: V(10G), V(512 MiB), V(1.5GiB), V(2GB). Units follow libvirt's own convention and are
    case-insensitive: V(K), V(M), V(G), V(T) and V(KiB), V(MiB), V(GiB), V(TiB) (also V(P)/V(PiB), V(E)/V(EiB))
    are powers of 1024; V(KB), V(MB), V(GB), V(TB) (also V(PB), V(EB)) are powers of 1000; V(b) and V(bytes)
    are bytes. So V(2G) is 2147483648 bytes and V(2GB) is 2000000000 bytes. What a number without a unit
    means is said by each option."
"""
