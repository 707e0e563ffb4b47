# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    # The two ways to give a definition (domain, network, pool): libvirt XML or a structured spec.
    # A module documents its own spec suboptions; the description of both options is this one.
    DOCUMENTATION = r"""
options:
  xml:
    description:
      - The object's libvirt XML. Its C(<name>) must equal O(name) (it is added when missing).
      - Parsed without entity expansion or network access; an XML with a DOCTYPE or an external entity is refused.
      - Mutually exclusive with O(spec).
    type: str
  spec:
    description:
      - Structured description of the object, turned into libvirt XML. Mutually exclusive with O(xml).
      - Unknown keys are an error, named by their path (for example C(spec.disks.speed)).
    type: dict
"""
