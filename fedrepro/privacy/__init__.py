"""Differentially private FedAvg: client-side DP-SGD, three clipping strategies, accounting.

* :class:`DPTrainer` — a ``LocalTrainer`` for :func:`fedrepro.fl.run_fedavg` (Poisson sampling,
  per-sample clipping, Gaussian noise; per-client accountants that compose over every round). Clipping
  by the ghost engine (:mod:`fedrepro.privacy.ghost`) or opacus's ``GradSampleModule`` (``engine=``);
  sampling, noise and accounting are opacus's.
* clipping strategies by name: ``flat``, ``per_layer_uniform``, ``per_layer_adaptive``, ``per_layer``
  (explicit list) — :mod:`fedrepro.privacy.clipping` says what a layer is and how M_j is measured.
* accounting: :func:`epsilon_for`, :func:`noise_for_epsilon` (opacus RDP by default, PRV by name).

These are mechanisms only. Paper 02's protocol built on them (its parameters, noise sweeps over the
strategies, claim checks and result keys) is :mod:`fedrepro.papers.p02_clipping`; its figures are
:mod:`fedrepro.papers.p02_plots`.
"""
from fedrepro.privacy.accounting import (ACCOUNTANTS, DEFAULT_ACCOUNTANT, epsilon_for, epsilon_for_history,
                                         expected_batch_size, make_accountant, noise_for_epsilon, sample_rate,
                                         steps_per_epoch)
from fedrepro.privacy.clipping import (STRATEGIES, ClipLayer, LayerClippingDPOptimizer, adaptive_thresholds,
                                       check_thresholds, clipping_layers, gradient_entries, layer_gradient_magnitudes,
                                       strategy_name, total_threshold, uniform_thresholds)
from fedrepro.privacy.trainer import (ClientPrivacy, DPIncompatibleModelError, DPTrainer, check_dp_compatible,
                                      history_epsilons)

__all__ = [
    "ACCOUNTANTS", "DEFAULT_ACCOUNTANT", "STRATEGIES", "ClientPrivacy", "ClipLayer", "DPIncompatibleModelError",
    "DPTrainer", "LayerClippingDPOptimizer", "adaptive_thresholds", "check_dp_compatible", "check_thresholds",
    "clipping_layers", "epsilon_for", "history_epsilons", "epsilon_for_history", "expected_batch_size", "gradient_entries",
    "layer_gradient_magnitudes", "make_accountant", "noise_for_epsilon", "sample_rate", "steps_per_epoch",
    "strategy_name", "total_threshold", "uniform_thresholds",
]
