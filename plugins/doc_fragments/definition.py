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
      - Only what the XML names is compared with the definition libvirt holds, as libvirt writes it back (the
        defaults it leaves out, the paths it normalises, the memory it adds up for memory devices); a console
        password or a disk's cookies are read with libvirt's secure flag and never shown in the result or the diff.
      - Defined with libvirt's schema validation, so an element or attribute the host's libvirt does not know
        fails the first run with libvirt's message and nothing changed. Where the driver cannot validate, what
        libvirt kept is compared with what was asked right after the define; on a difference the previous
        definition is restored (a new one removed) and the run fails naming what libvirt did not keep.
      - Mutually exclusive with O(spec).
    type: str
  spec:
    description:
      - Structured description of the object, turned into libvirt XML. Mutually exclusive with O(xml).
      - Unknown keys are an error, named by their path (for example C(spec.disks.speed)).
    type: dict
"""
