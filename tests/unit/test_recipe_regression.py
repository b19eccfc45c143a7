"""The same seeds give the same losses and samples as the code before the training recipe moved out of the diffusion
process (tests/helpers/recipe_reference.py wrote the reference with that code)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.recipe_reference import CASES, REFERENCE, SAMPLERS, run_case


@pytest.fixture(scope="module")
def reference():
    return torch.load(REFERENCE, weights_only=True)


@pytest.mark.parametrize("case", list(CASES))
def test_a_setup_trains_and_samples_as_before(case, reference, tmp_path):
    now, before = run_case(CASES[case], tmp_path), reference[case]
    # 4 steps of Adam from the same seed: equal up to float rounding (which differs between CPU kernels)
    torch.testing.assert_close(now["losses"], before["losses"], rtol=1e-4, atol=1e-6)
    for name in SAMPLERS:
        torch.testing.assert_close(now[name], before[name], rtol=1e-3, atol=1e-4, msg=f"{case}, {name}")
