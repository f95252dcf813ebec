"""Paper 05's automatic transformation search.

- :mod:`~fedrepro.search.scores`: the privacy score S_pri (eqs. 6–7) and the accuracy score S_acc (eqs. 8–10);
- :mod:`~fedrepro.search.semi`: the semi-trained model M^s that S_pri is measured on;
- :mod:`~fedrepro.search.store`: the resumable JSON-lines results file;
- :mod:`~fedrepro.search.algorithm`: Algorithm 1 (:class:`PolicySearch`) and its ranking.
"""
from __future__ import annotations

from fedrepro.search.algorithm import PolicySearch, SearchSettings, disjoint_hybrid, passes, rank_records
from fedrepro.search.scores import (AccuracyScore, PrivacyScore, Transform, accuracy_batches, accuracy_score,
                                    jacobian_score, path_points, pick_images, privacy_inputs, privacy_score)
from fedrepro.search.semi import train_semi_model
from fedrepro.search.store import SearchStore, fingerprint, load_search

__all__ = [
    "AccuracyScore", "PolicySearch", "PrivacyScore", "SearchSettings", "SearchStore", "Transform", "accuracy_batches",
    "accuracy_score", "disjoint_hybrid", "fingerprint", "jacobian_score", "load_search",
    "passes", "path_points", "pick_images", "privacy_inputs", "privacy_score", "rank_records", "train_semi_model",
]
