"""Each paper's whole protocol, one module per paper: its parameters, tables, figures, result keys and
claim checks. Mechanisms (attacks, defenses, DP-SGD, adversarial examples) live in their own packages;
a paper module only composes them, and a notebook only calls a paper module.

=============================  ==========================================================================
paper                          protocol module (figures)
=============================  ==========================================================================
01 DP + int8 + adversarial      :mod:`p01_robustness` (:mod:`p01_plots`)
02 DP clipping strategies       :mod:`p02_clipping` (:mod:`p02_plots`)
03 gradient inversion           :mod:`p03_inversion`
04 PRECODE vs CVB               :mod:`p04_cvb` (:mod:`p04_training`, :mod:`p04_leakage`, :mod:`p04_study`,
                               :mod:`p04_tables`; :mod:`p04_plots`)
05 transformation search        :mod:`p05_ats`
=============================  ==========================================================================
"""
