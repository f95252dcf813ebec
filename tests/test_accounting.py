"""ε with the per-step RDP cached equals opacus's RDP accountant exactly, for mixed histories and deltas."""
from __future__ import annotations

import random
import warnings

import pytest
from opacus.accountants import RDPAccountant

from fedrepro.privacy.accounting import epsilon_for_history, epsilon_of


def test_cached_rdp_epsilon_is_opacus_epsilon_bit_for_bit():
    rng = random.Random(0)
    for _ in range(25):
        accountant = RDPAccountant()
        accountant.history = [(rng.choice([0.3, 0.7, 1.0, 2.5]), rng.choice([0.01, 0.1, 0.125]), rng.randint(1, 500))
                              for _ in range(rng.randint(1, 4))]
        delta = rng.choice([1e-5, 1e-3])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = float(accountant.get_epsilon(delta=delta))
        assert epsilon_of(accountant, delta) == reference


def test_epsilon_grows_with_steps_and_falls_with_noise():
    assert epsilon_for_history([(1.0, 0.1, 100)], 1e-5) < epsilon_for_history([(1.0, 0.1, 200)], 1e-5)
    assert epsilon_for_history([(2.0, 0.1, 100)], 1e-5) < epsilon_for_history([(1.0, 0.1, 100)], 1e-5)
    split = epsilon_for_history([(1.0, 0.1, 60), (1.0, 0.1, 40)], 1e-5)
    assert split == pytest.approx(epsilon_for_history([(1.0, 0.1, 100)], 1e-5), rel=1e-12)  # RDP adds up
