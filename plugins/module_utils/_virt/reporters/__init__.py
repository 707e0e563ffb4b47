# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only reporters: what a host has (guests with their leases, every lease and who holds it), for the
``*_info`` modules. They read and never change anything."""
