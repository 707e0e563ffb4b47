#!/usr/bin/python
# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: volume
short_description: Create, grow, clone, import and remove libvirt storage volumes
version_added: 0.1.0
description:
  - Manages one volume of a running libvirt storage pool.
  - A new volume is created empty (O(capacity)), as a copy-on-write overlay of O(backing_volume), as a
    copy of O(clone_from), or with the content of an image (O(import_from)) - a file on the host, or a
    cloud image fetched over HTTP or HTTPS and checked against O(checksum). These sources are used only
    when the volume is created; an existing volume is never re-copied, and for an existing volume an
    O(import_from) URL is not fetched at all.
  - Growing O(capacity) resizes the volume. Shrinking it is refused unless O(allow_shrink=true). Its format
    and backing volume cannot change; asking for another one is an error.
  - A name with a path separator, C(..) or a NUL is refused, and a volume whose path does not lie directly
    in its pool's directory is never resized, wiped or deleted.
extends_documentation_fragment:
  - lockstep.virt.attributes
  - lockstep.virt.attributes.actiongroup_libvirt
  - lockstep.virt.connection
  - lockstep.virt.sizes
attributes:
  check_mode:
    support: full
    details:
      - Predicts every action (create, clone, fetch, convert, import, resize, wipe, delete) and the resulting volume.
      - An O(import_from) URL is not fetched in check mode; RV(image) says what would be fetched and whether
        the cache already holds it. The format and size of an image that is not cached yet are known only
        once it is fetched, so check mode cannot predict a C(convert) for it.
  diff_mode:
    support: full
    details: The diff shows the volume's format, capacity and backing file before and after, and the image
      an import fetches or takes from the cache.
  idempotent:
    support: full
options:
  pool:
    description: Name of the storage pool (it must be running).
    type: str
    required: true
  name:
    description: Name of the volume (a plain file name for directory pools).
    type: str
    required: true
  state:
    description:
      - V(present) - the volume exists with at least O(capacity).
      - V(absent) - the volume is deleted (see O(wipe)). Absent already is no change.
    type: str
    choices: [present, absent]
    default: present
  capacity:
    description:
      - Size the guest sees, a size (see the note on sizes); a number without a unit is bytes.
      - Required to create an empty volume; an overlay, clone or import defaults to its source's size.
      - libvirt rounds qcow2 sizes up to whole 512-byte sectors; that is not a difference.
    type: raw
  allocation:
    description:
      - Space allocated up front when the volume is created (V(0) for a sparse volume). Not compared afterwards.
      - A size (see the note on sizes); a number without a unit is bytes.
    type: raw
  format:
    description:
      - Image format. libvirt's default for the pool (raw for directory pools) when not given for an empty volume;
        an overlay is qcow2; a clone or an import keeps its source's format.
      - An existing volume of another format is an error (formats are not converted).
    type: str
    choices: [qcow2, raw]
  backing_volume:
    description:
      - Create the volume as a qcow2 overlay on this volume - a name in O(pool), or the absolute path of a
        volume libvirt knows. The backing volume is only read.
    type: str
  clone_from:
    description: Create the volume as a full copy of this volume - a name in O(pool), or the absolute path of a volume.
    type: str
  import_from:
    description:
      - Create the volume with the content of an image - qcow2 or raw, detected from its header; a qcow2
        overlay that refers to a backing file is refused.
      - An absolute path of a file on the hypervisor; O(format), when given, must be the file's format. The
        file is only read.
      - Or an C(http://) or C(https://) URL. O(checksum) is then required - an image that cannot be verified is
        not imported. The image is fetched on the hypervisor into O(cache_dir) (written to a C(.part) file, its
        hash computed while it is written, renamed to its cache name only when it has the checksum), unless the
        cache already holds a file with that checksum (then no request is made). When O(format) differs from the
        image's format, a copy in O(format) is made with C(qemu-img convert) beside the cache entry and removed
        after the import.
      - A password in the URL (V(https://user:password@host/...)) is masked in the results, messages and logs.
      - Needs a local connection (the default O(uri)), as the image is read where the module runs.
    type: str
  checksum:
    description:
      - The checksum an O(import_from) URL's image must have, as M(ansible.builtin.get_url) takes it -
        V(sha256:<hex>), V(sha512:<hex>), or V(sha256:<URL>) (or V(sha512:<URL>)) of a checksum file, whose line
        naming the image's file name gives it (C(<hex>  <name>) or C(<hex> *<name>) as C(sha256sum) writes it,
        or the BSD form C(sha256sum --tag) writes);
        a file holding one word is that word.
      - A checksum file is read (one request) every time an image has to be looked up in the cache, but not in
        check mode, and not when the volume exists.
      - A wrong checksum fails the task; the downloaded file is removed and no volume is created.
      - Only with an O(import_from) URL.
    type: str
  timeout:
    description: Seconds to wait for the server of an O(import_from) URL (and of its checksum file) to answer.
    type: int
    default: 60
  validate_certs:
    description: Whether the server certificate of an C(https://) O(import_from) URL (and checksum file) is checked.
    type: bool
    default: true
  cache_dir:
    description:
      - Directory on the hypervisor where images fetched from an O(import_from) URL are kept, one file per image
        named after its checksum (C(sha256-<hex>)). Created (mode C(0700)) when it does not exist. Remove what it
        holds when it is no longer needed; an image whose checksum is asked for again is then fetched again.
    type: path
    default: /var/cache/lockstep-virt/images
  wipe:
    description: With O(state=absent), overwrite the volume's data before deleting it.
    type: bool
    default: false
  allow_shrink:
    description: Allow O(capacity) smaller than the volume's current size (the data past the new end is lost).
    type: bool
    default: false
notes:
  - O(backing_volume), O(clone_from) and O(import_from) are mutually exclusive.
  - Fetches into one O(cache_dir) take turns (a lock on the directory); a C(.part) file an interrupted run left
    behind is written over by the next fetch of that image.
seealso:
  - module: lockstep.virt.pool
  - module: lockstep.virt.volume_info
author:
  - lockstep.virt contributors (@lockstep)
"""

EXAMPLES = r"""
- name: A pool for the examples
  lockstep.virt.pool:
    name: lab-images
    state: active
    spec:
      type: dir
      path: /var/lib/lockstep-lab/shared/pools/lab-images

- name: An empty 1 GiB qcow2 volume
  lockstep.virt.volume:
    pool: lab-images
    name: base.qcow2
    capacity: 1G
    format: qcow2

- name: Grown to 2 GiB (shrinking would need allow_shrink)
  lockstep.virt.volume:
    pool: lab-images
    name: base.qcow2
    capacity: 2G

- name: A copy-on-write overlay for one guest
  lockstep.virt.volume:
    pool: lab-images
    name: web1.qcow2
    backing_volume: base.qcow2

- name: A full copy
  lockstep.virt.volume:
    pool: lab-images
    name: web2.qcow2
    clone_from: base.qcow2

- name: A Debian cloud image, fetched onto the hypervisor, checked against Debian's checksum file, cached
  lockstep.virt.volume:
    pool: lab-images
    name: debian-12.qcow2
    import_from: https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2
    checksum: sha512:https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS
    capacity: 4G

- name: The same image as a raw volume (converted with qemu-img, from the cache with no new download)
  lockstep.virt.volume:
    pool: lab-images
    name: debian-12.raw
    import_from: https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2
    checksum: sha512:https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS
    format: raw

- name: Wipe and remove them
  lockstep.virt.volume:
    pool: lab-images
    name: "{{ item }}"
    state: absent
    wipe: true
  loop: [web1.qcow2, web2.qcow2, base.qcow2]
"""

RETURN = r"""
volume:
  description: The volume after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    name: {description: Name., type: str, returned: success}
    pool: {description: Pool., type: str, returned: success}
    path: {description: Path on the host (null for a volume check mode would create)., type: str, returned: success}
    key: {description: libvirt's key of the volume., type: str, returned: success}
    type: {description: "file, block, ...", type: str, returned: success}
    format: {description: Image format., type: str, returned: success}
    capacity: {description: Bytes the guest sees., type: int, returned: success}
    allocation: {description: Bytes allocated on the host., type: int, returned: success}
    backing: {description: "Backing file (path, format), or null.", type: dict, returned: success}
  sample: {name: web1.qcow2, pool: lab-images, path: /var/lib/lockstep-lab/shared/pools/lab-images/web1.qcow2,
           key: /var/lib/lockstep-lab/shared/pools/lab-images/web1.qcow2, type: file, format: qcow2,
           capacity: 2147483648, allocation: 200704,
           backing: {path: /var/lib/lockstep-lab/shared/pools/lab-images/base.qcow2, format: qcow2}}
image:
  description:
    - The image an O(import_from) URL names, when a volume is created from it (also in check mode).
  returned: when a volume is created from an O(import_from) URL
  type: dict
  contains:
    url: {description: "The URL, its password masked.", type: str, returned: success}
    checksum:
      description: V(sha256:<hex>) (or sha512); in check mode with a checksum file, V(sha256:<URL of the file>).
      type: str
      returned: success
    path:
      description: The image's file in O(cache_dir) (null in check mode with a checksum file).
      type: str
      returned: success
    cached:
      description: Whether the image came from the cache (no request for it). In check mode, whether the cache
        holds it; null in check mode with a checksum file (it is not read).
      type: bool
      returned: success
    downloaded: {description: Bytes downloaded (0 from the cache and in check mode)., type: int, returned: success}
    format: {description: "The image's format (qcow2 or raw), once it is on the host.", type: str, returned: when known}
  sample: {url: "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
           checksum: "sha512:8f0c...e1", path: "/var/cache/lockstep-virt/images/sha512-8f0c...e1",
           cached: false, downloaded: 338427904, format: qcow2}
actions:
  description:
    - What was done (or would be, in check mode), in order.
    - An import from a URL is C(fetch) (when the image is not cached), C(convert) (to O(format)), then C(import).
  returned: always
  type: list
  elements: str
  sample: [create_overlay]
libvirt_error:
  description: libvirt's C(code), C(domain) and C(message), when a libvirt call failed.
  returned: failure
  type: dict
"""


from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.volume import (
    VOLUME_ARGUMENT_SPEC,
    VOLUME_MUTUALLY_EXCLUSIVE,
    VolumeManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.runner import run_libvirt_module


def main():
    run_libvirt_module(VOLUME_ARGUMENT_SPEC, manager=VolumeManager, mutually_exclusive=VOLUME_MUTUALLY_EXCLUSIVE)


if __name__ == "__main__":
    main()
