"""The search's results file: JSON lines, a ``meta`` line first (settings, normalisation, fingerprints
of the models and images), then one line per policy each time something about it becomes known.

Lines of one policy merge in file order, so a record grows (S_acc first, S_pri later) without
rewriting the file; an interrupted write leaves at most one unreadable last line, which is skipped.
A resumed search reuses every stored score and never evaluates a policy twice.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn


def fingerprint(*items: Any) -> str:
    """A short SHA-256 of models (their state) and tensors, to notice a resumed search on other inputs."""
    digest = hashlib.sha256()
    for item in items:
        tensors = item.state_dict().values() if isinstance(item, nn.Module) else [item]
        for t in tensors:
            if isinstance(t, torch.Tensor):
                digest.update(t.detach().cpu().contiguous().numpy().tobytes())
            else:
                digest.update(repr(t).encode())
    return digest.hexdigest()[:16]


class SearchStore:
    """One search file: ``records`` (policy -> merged record) loaded from ``path``, and :meth:`append`.

    A file started with other ``meta["settings"]``, mean or std is refused (its scores would not
    compare); other fingerprints only warn, and the stored scores are reused as they are.
    """

    def __init__(self, path: str | Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta
        self.records: dict[str, dict[str, Any]] = {}
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.append({"meta": self.meta})
            return
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{self.path}:{number}: skipping an unreadable line (interrupted write?)")
                continue
            if "meta" in item:
                self._check_meta(item["meta"])
            elif "policy" in item:
                self.records.setdefault(item["policy"], {}).update(item)

    def _check_meta(self, stored: dict[str, Any]) -> None:
        mine = self.meta
        if stored.get("settings") != mine["settings"] or stored.get("mean") != mine["mean"] \
                or stored.get("std") != mine["std"]:
            raise ValueError(f"{self.path} holds a search with other settings ({stored.get('settings')}); "
                             f"use another path or delete it")
        changed = [k for k, v in mine["fingerprints"].items() if stored.get("fingerprints", {}).get(k) != v]
        if changed:
            warnings.warn(f"resuming {self.path} with different {', '.join(changed)} than it was started with; "
                          "stored scores are reused as they are")

    def append(self, item: dict[str, Any]) -> None:
        """Write one line and flush it, so an interruption loses at most the score being computed."""
        with open(self.path, "a") as handle:
            handle.write(json.dumps(item) + "\n")
            handle.flush()

    def save(self, record: dict[str, Any]) -> None:
        """Keep ``record`` as its policy's record and append it to the file."""
        self.records[record["policy"]] = record
        self.append(record)


def load_search(path: str | Path) -> list[dict[str, Any]]:
    """The records of a search file without models (for plots): one merged dict per policy."""
    records: dict[str, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "policy" in item:
            records.setdefault(item["policy"], {}).update(item)
    return list(records.values())
