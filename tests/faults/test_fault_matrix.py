"""The fault matrix: each fault at each phase of a lockstep.virt.migrate run (see harness.py), then the
invariants and a second run of the same task that must converge. The table of faults injected, survived
and lost is printed at the end of the session (conftest.py) and kept in the README's "Fault matrix".

Faults that interrupt the run itself (the module's process killed, the controller interrupted) converge
because the module reconciles, on the next run, what a run it did not finish left.
"""

import uuid

import pytest
from harness import FAULTS, run_cell

CELLS = [(f, p) for f in FAULTS for p in f.phases]


def _param(fault, phase):
    return pytest.param(fault, phase, id="{}@{}".format(fault.name.replace(" ", "-"), phase))


@pytest.mark.parametrize("fault,phase", [_param(f, p) for f, p in CELLS])
def test_fault(lab, matrix, fault, phase):
    outcome = run_cell(lab, "fm-" + uuid.uuid4().hex[:8], fault, phase)
    matrix.append(outcome)
    assert outcome["injected"], outcome
    assert not outcome["problems"], outcome
