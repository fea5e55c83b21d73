"""experiment_results (DESIGN.md §14): per experiment x variant, from the closed exposed sessions.

The stored sums are exposed sessions and conversions per variant (added once per batch, like the
funnel: app/sinks/exactly_once.py); everything else is derived from the sums on each write:
- conversion_rate with its 95% Wilson interval (statsmodels `proportion_confint`);
- lift vs the control: absolute (rate points) and relative (% of the control's rate);
- p_value: the two-sided two-proportion z-test against the control, pooled variance
  (statsmodels `proportions_ztest`); `significant` when p < 0.05;
- srm_p_value: the chi-square goodness-of-fit test of all variants' exposed sessions against the
  configured weights (scipy `chisquare`); `sample_ratio_mismatch` when p < 0.001, the usual bar:
  the assignment or the exposure is broken and the comparison should not be trusted.
"""
from __future__ import annotations

import math
from typing import Mapping

from scipy.stats import chisquare
from statsmodels.stats.proportion import proportion_confint, proportions_ztest

from app.experiments.design import Experiment

ALPHA = 0.05
SRM_ALPHA = 0.001


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def variant_documents(experiment: Experiment, sums: Mapping[str, Mapping]) -> dict[str, dict]:
    """{variant: {exposed_sessions, conversions}} -> {variant: the experiment_results figures}."""
    counts = {v.name: (int(sums.get(v.name, {}).get("exposed_sessions", 0)),
                       int(sums.get(v.name, {}).get("conversions", 0))) for v in experiment.variants}
    control_n, control_c = counts[experiment.control]
    control_rate = control_c / control_n if control_n else None
    weights = experiment.weights()
    exposed_total = sum(n for n, _ in counts.values())
    srm_p = None
    if exposed_total:
        observed = [counts[v.name][0] for v in experiment.variants]
        expected = [exposed_total * weights[v.name] for v in experiment.variants]
        srm_p = _finite(chisquare(observed, expected).pvalue)
    docs = {}
    for variant in experiment.variants:
        n, c = counts[variant.name]
        rate = c / n if n else None
        low, high = (proportion_confint(c, n, alpha=ALPHA, method="wilson") if n else (None, None))
        doc = {"_id": f"{experiment.name}|{variant.name}", "experiment": experiment.name, "variant": variant.name,
               "is_control": variant.name == experiment.control, "weight": round(weights[variant.name], 6),
               "exposed_sessions": n, "conversions": c,
               "conversion_rate": None if rate is None else round(rate, 6),
               "ci95_low": None if low is None else round(float(low), 6),
               "ci95_high": None if high is None else round(float(high), 6),
               "lift_abs": None, "lift_pct": None, "z": None, "p_value": None, "significant": False,
               "srm_p_value": srm_p, "sample_ratio_mismatch": srm_p is not None and srm_p < SRM_ALPHA}
        if variant.name != experiment.control and rate is not None and control_rate is not None:
            doc["lift_abs"] = round(rate - control_rate, 6)
            doc["lift_pct"] = round(100 * (rate - control_rate) / control_rate, 4) if control_rate else None
            if 0 < c + control_c < n + control_n:  # a test needs some conversions and some non-conversions
                z, p = proportions_ztest([c, control_c], [n, control_n], alternative="two-sided")
                doc["z"], doc["p_value"] = _finite(z), _finite(p)
                doc["significant"] = doc["p_value"] is not None and doc["p_value"] < ALPHA
        docs[variant.name] = doc
    return docs
