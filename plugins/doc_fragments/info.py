# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    # How the *_info modules select what they list.
    DOCUMENTATION = r"""
options:
  name:
    description:
      - Only the object of this name; all of them when not given.
      - A name with no such object gives an empty list, not an error.
    type: str
"""
