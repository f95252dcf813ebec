"""Algorithm 1 of paper 05 (:class:`PolicySearch`) and its ranking.

Candidates are drawn uniformly from the 127,550 policies of ≤ 3 operations (a fixed, seeded
sequence, so a longer search extends a shorter one); each gets S_acc, and S_pri only if it passes
``S_acc ≥ t_acc`` (the paper's loop never needs S_pri of a filtered policy); the top-n by S_pri are
kept (:func:`rank_records`), and the hybrid joins the best ones that share no operation
(:func:`disjoint_hybrid`). Every result goes to the search file (:class:`~fedrepro.search.store.SearchStore`)
as soon as it is known.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fedrepro.defenses.transforms import Policy, PolicyLike, random_policies
from fedrepro.runtime import generator
from fedrepro.search.scores import accuracy_score, privacy_score
from fedrepro.search.store import SearchStore, fingerprint

@dataclass
class SearchSettings:
    """Everything a stored search result depends on besides the models and images."""

    points: int = 21
    rule: str = "trapezoid"
    similarity: str = "layer"
    runs: int = 10
    acc_batch_size: int | None = None
    normalize_acc: bool = False
    respect_probability: bool = False
    crop_flip: bool = False
    max_ops: int = 3
    seed: int = 0



def passes(record: Mapping[str, Any], t_acc: float | None) -> bool:
    """Algorithm 1's filter: ``S_acc ≥ t_acc`` (everything passes without a threshold)."""
    return t_acc is None or record.get("s_acc", -math.inf) >= t_acc


def rank_records(records: Sequence[Mapping[str, Any]], n: int, rank: str = "mean") -> list[Mapping[str, Any]]:
    """The ``n`` best of ``records`` (each with ``s_pri``): the lowest S_pri (``rank="mean"``, Algorithm 1),
    or the lowest ``0.7·z(S_pri) + 0.3·z(variance of S_pri over images)`` (``rank="mean_var"``, the
    reference's ranking; z standardises over ``records``). Ties go to the smaller policy string."""
    if rank == "mean":
        return sorted(records, key=lambda r: (r["s_pri"], r["policy"]))[:n]
    if rank == "mean_var":
        if not records:
            return []
        means = np.array([r["s_pri"] for r in records])
        variances = np.array([(r.get("s_pri_std") or 0.0) ** 2 for r in records])

        def z(v: np.ndarray) -> np.ndarray:
            return (v - v.mean()) / (v.std() or 1.0)

        score = 0.7 * z(means) + 0.3 * z(variances)
        order = sorted(range(len(records)), key=lambda i: (score[i], records[i]["policy"]))
        return [records[i] for i in order[:n]]
    raise ValueError(f"rank must be 'mean' or 'mean_var', got {rank!r}")


def disjoint_hybrid(ranked: Iterable[Mapping[str, Any]], n: int = 2, disjoint: bool = True) -> str:
    """``"a+b"`` of the first ``n`` policies of ``ranked``, each sharing no operation index with those
    before (the paper: "all the selected transformation policies cannot have common transformation
    functions"); ``disjoint=False`` takes the first ``n``."""
    chosen: list[str] = []
    used: set[int] = set()
    for record in ranked:
        ops = Policy(record["policy"]).operations
        if disjoint and ops & used:
            continue
        chosen.append(record["policy"])
        used |= ops
        if len(chosen) == n:
            break
    if not chosen:
        raise ValueError("no qualified policy has been scored yet")
    return "+".join(chosen)


class PolicySearch:
    """Algorithm 1 with its results on disk (JSON lines: policy, s_pri, s_acc, …), resumable.

    ::

        search = PolicySearch(semi_model, random_model, pri_images, pri_labels, acc_images, acc_labels,
                              mean=data.mean, std=data.std, path="runs/05/search.jsonl", t_acc=-85)
        best = search.run(c_max=1500, n=2)      # the top-2 records, lowest S_pri first
        policy = search.hybrid(n=2)             # "a+b" of the best policies with no common operation

    ``evaluate(policy)`` scores any policy (cached, e.g. the 50 single operations for Figure 5);
    ``evaluations`` counts what this object computed (S_pri / S_acc), so a resumed search shows 0.
    ``best`` and ``hybrid`` choose among the candidates of the last ``run`` (``searched``), never among
    policies scored only for a figure: the file may hold those from an earlier session, and a resumed
    search must pick what a fresh one picks.
    """

    def __init__(self, privacy_model: nn.Module, accuracy_model: nn.Module, privacy_images: torch.Tensor,
                 privacy_labels: torch.Tensor, accuracy_images: torch.Tensor, accuracy_labels: torch.Tensor, *,
                 mean: Sequence[float], std: Sequence[float], path: str | Path, t_acc: float | None = None,
                 settings: SearchSettings | None = None, chunk_size: int | None = None,
                 memory_budget: float = 1.5e9) -> None:
        self.privacy_model, self.accuracy_model = privacy_model, accuracy_model
        self.privacy_images, self.privacy_labels = privacy_images, privacy_labels
        self.accuracy_images, self.accuracy_labels = accuracy_images, accuracy_labels
        self.mean, self.std = tuple(mean), tuple(std)
        self.t_acc = t_acc
        self.settings = settings or SearchSettings()
        self.chunk_size, self.memory_budget = chunk_size, memory_budget
        self.evaluations = {"privacy": 0, "accuracy": 0}
        self.searched: list[str] | None = None  # Algorithm 1's candidates, once run() has evaluated them
        self.store = SearchStore(path, {
            "settings": asdict(self.settings), "mean": list(self.mean), "std": list(self.std),
            "fingerprints": {
                "privacy_model": fingerprint(privacy_model), "accuracy_model": fingerprint(accuracy_model),
                "privacy_images": fingerprint(privacy_images, privacy_labels),
                "accuracy_images": fingerprint(accuracy_images, accuracy_labels),
            },
        })

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        """Every stored record by policy (from the file and this session)."""
        return self.store.records

    # scoring
    def _accuracy(self, policy: str) -> dict[str, Any]:
        s = self.settings
        started = time.perf_counter()
        score = accuracy_score(self.accuracy_model, self.accuracy_images, self.accuracy_labels, policy,
                               mean=self.mean, std=self.std, runs=s.runs, batch_size=s.acc_batch_size, seed=s.seed,
                               respect_probability=s.respect_probability, crop_flip=s.crop_flip,
                               normalize=s.normalize_acc)
        self.evaluations["accuracy"] += 1
        return {"s_acc": score.value, "s_acc_runs": score.per_run.tolist(),
                "seconds_acc": round(time.perf_counter() - started, 3)}

    def _privacy(self, policy: str) -> dict[str, Any]:
        s = self.settings
        started = time.perf_counter()
        score = privacy_score(self.privacy_model, self.privacy_images, self.privacy_labels, policy,
                              mean=self.mean, std=self.std, points=s.points, rule=s.rule, similarity=s.similarity,
                              seed=s.seed, respect_probability=s.respect_probability, crop_flip=s.crop_flip,
                              chunk_size=self.chunk_size, memory_budget=self.memory_budget)
        self.evaluations["privacy"] += 1
        return {"s_pri": score.value, "s_pri_std": score.std, "s_pri_dead": round(score.dead_fraction, 4),
                "s_pri_curve": [round(v, 6) for v in score.curve.tolist()],
                "seconds_pri": round(time.perf_counter() - started, 3)}

    def passes(self, record: dict[str, Any], t_acc: float | None = None) -> bool:
        return passes(record, self.t_acc if t_acc is None else t_acc)

    def evaluate(self, policy: PolicyLike, privacy: bool | None = None) -> dict[str, Any]:
        """Score ``policy`` (from the stored results when known). S_pri is computed when ``privacy`` is
        True, or (None) when S_acc passes ``t_acc`` — Algorithm 1's order."""
        key = str(Policy(policy))
        record = dict(self.records.get(key, {"policy": key}))
        new: dict[str, Any] = {}
        if "s_acc" not in record:
            new.update(self._accuracy(key))
            record.update(new)
        want = self.passes(record) if privacy is None else privacy
        if want and record.get("s_pri") is None:
            found = self._privacy(key)
            new.update(found)
            record.update(found)
        if new:
            record.setdefault("s_pri", None)
            self.store.save(record)
        return record

    # the search
    def candidates(self, count: int) -> list[str]:
        """The first ``count`` of the seeded candidate sequence (a prefix of any longer one)."""
        return random_policies(count, generator(self.settings.seed, "search-candidates"), self.settings.max_ops)

    def run(self, c_max: int = 1500, n: int = 2, candidates: Iterable[PolicyLike] | None = None,
            extend: bool = True, max_candidates: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
        """Evaluate ``c_max`` candidates (or the given ones) and return the top-``n`` qualified records.

        As in Algorithm 1, when fewer than ``n`` pass the filter the search goes on sampling
        (``extend``), up to ``max_candidates`` (default 10·c_max).
        """
        explicit = candidates is not None
        todo = [str(Policy(p)) for p in candidates] if explicit else self.candidates(c_max)
        limit = len(todo) if explicit or not extend else (max_candidates or 10 * c_max)
        bar = tqdm(total=len(todo), desc="policy search", unit="policy", disable=not progress)
        done = 0
        try:
            while True:
                for policy in todo[done:]:
                    self.evaluate(policy)
                    done += 1
                    bar.update(1)
                    top = self.best(1, policies=todo[:done])
                    if top:
                        bar.set_postfix(best=top[0]["policy"], s_pri=f"{top[0]['s_pri']:.4f}")
                if explicit or not extend or len(self.best(n, policies=todo)) >= n or len(todo) >= limit:
                    break
                more = min(limit, len(todo) + max(n, c_max // 10))
                todo = self.candidates(more)
                bar.total = len(todo)
                bar.refresh()
        finally:
            bar.close()
        self.searched = todo[:done]
        return self.best(n)

    def best(self, n: int = 2, t_acc: float | None = None, rank: str = "mean",
             policies: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The ``n`` qualified records with the lowest S_pri (``rank="mean"``, Algorithm 1), or with the
        lowest 0.7·z(S_pri) + 0.3·z(variance over images) (``rank="mean_var"``, the reference's ranking),
        among ``policies`` (default: ``searched``, or every stored record before any ``run``)."""
        if policies is None:
            policies = self.searched
        pool = self.records.values() if policies is None else [self.records[str(Policy(p))] for p in policies
                                                                  if str(Policy(p)) in self.records]
        qualified = [r for r in pool if r.get("s_pri") is not None and self.passes(r, t_acc)]
        return rank_records(qualified, n, rank)

    def hybrid(self, n: int = 2, t_acc: float | None = None, rank: str = "mean", disjoint: bool = True,
               policies: Iterable[str] | None = None) -> str:
        """``"a+b"`` of the best ``n`` policies (among ``policies``, as :meth:`best`), each sharing no
        operation index with those before (the paper: "all the selected transformation policies cannot
        have common transformation functions")."""
        return disjoint_hybrid(self.best(len(self.records), t_acc, rank, policies), n, disjoint)

    def table(self) -> list[dict[str, Any]]:
        """Every stored record (policy, s_acc, s_pri, …), in the order first scored."""
        return list(self.records.values())
