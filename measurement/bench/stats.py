"""Small statistics for noisy timings: medians, percentiles and ratios that survive a missing side."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from measurement.eval_routing import percentile

__all__ = ["median", "p95", "percentile", "ratio", "spread"]


def median(values: Sequence[float]) -> float:
    """The median; 0.0 for no values (a skipped measurement, reported as such elsewhere)."""
    return float(statistics.median(values)) if values else 0.0


def p95(values: Sequence[float]) -> float:
    """The 95th percentile (linear interpolation); 0.0 for no values."""
    return percentile(values, 95) if values else 0.0


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how much the repeats disagree, so a reader can judge the noise."""
    mid = median(values)
    return (max(values) - min(values)) / mid if values and mid else 0.0


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either side was not measured."""
    if not numerator or not denominator:
        return None
    return numerator / denominator
