# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    # The attributes every lockstep.virt module documents; modules set their support level.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return the changed status it predicts without modifying the target.
  diff_mode:
    description: Returns details on what has changed (or would change in C(check_mode)) in C(diff) mode.
  idempotent:
    description:
      - When run twice in a row with the same arguments, the second run reports no change.
      - This applies in normal, check and diff mode alike.
  platform:
    description: Target operating system and hypervisor.
    support: full
    platforms: posix
"""

    # For *_info modules.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details: This module never changes anything.
  diff_mode:
    support: N/A
    details: This module never changes anything.
  idempotent:
    support: full
"""

    # Membership of the action group (module_defaults: group/lockstep.virt.libvirt).
    ACTIONGROUP_LIBVIRT = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/lockstep.virt.libvirt) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - lockstep.virt.libvirt
"""
