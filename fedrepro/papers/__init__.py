"""Each paper's whole protocol, one module per paper: its parameters, tables, figures, result keys and
claim checks. Mechanisms (attacks, defenses, DP-SGD, adversarial examples) live in their own packages;
a paper module only composes them, and a notebook only calls a paper module.

=============================  ==========================================================================
paper                          protocol module (figures)
=============================  ==========================================================================
00 quickstart (paper 04's      :mod:`p00_quickstart` (its parameters only: the notebook stays bare)
   FedAvg protocol)
01 DP + int8 + adversarial      :mod:`p01_robustness` (:mod:`p01_plots`)
02 DP clipping strategies       :mod:`p02_clipping` (:mod:`p02_plots`)
03 gradient inversion           :mod:`p03_inversion`
04 PRECODE vs CVB               :mod:`p04_cvb` (:mod:`p04_training`, :mod:`p04_leakage`, :mod:`p04_study`,
                               :mod:`p04_tables`; :mod:`p04_plots`)
05 transformation search        :mod:`p05_ats`
06 privacy matrix (all papers)  :mod:`p06_matrix` (:mod:`p06_plots`)
=============================  ==========================================================================
"""
from __future__ import annotations

import dataclasses
from importlib import import_module
from typing import Any

PARAMETERS = {
    "00_quickstart": "p00_quickstart:QuickstartParameters",
    "01_robustness": "p01_robustness:RobustnessParameters",
    "02_clipping": "p02_clipping:ClippingParameters",
    "03_inversion": "p03_inversion:InversionParameters",
    "04_cvb": "p04_cvb:CVBParameters",
    "05_transformation_search": "p05_ats:ATSParameters",
    "06_privacy_matrix": "p06_matrix:MatrixParameters",
}
"""Each notebook's validated parameter dataclass, so ``fedrepro run`` can check a run's parameters before
a kernel starts (the notebook builds the same dataclass from its parameters cell)."""


def check_parameters(notebook: str, values: dict[str, Any]) -> None:
    """Build ``notebook``'s parameter dataclass from ``values`` (the names it declares); its validation
    raises a ValueError naming the bad parameter, its value and what is valid. Notebooks without one pass."""
    if notebook not in PARAMETERS:
        return
    module, _, name = PARAMETERS[notebook].partition(":")
    cls = getattr(import_module(f"fedrepro.papers.{module}"), name)
    fields = {field.name for field in dataclasses.fields(cls)}
    cls(**{key: value for key, value in values.items() if key in fields})
