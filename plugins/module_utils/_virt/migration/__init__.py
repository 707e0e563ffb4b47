# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The phases of a verified migration (plan, preflight, transfer, handoff, reconcile) and their parts
(lease view, lifecycle events, handoff marker, timing); managers/migration.py runs them."""
