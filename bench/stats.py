"""Medians, spreads and percentiles, small and dependency-free."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import attrs


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank-with-interpolation percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    frac = pos - low
    return float(sorted_values[low] * (1 - frac) + sorted_values[high] * frac)


@attrs.frozen
class Summary:
    """Repetitions of one figure: median and the spread [min, max] around it."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(tuple(v for v in values if not math.isnan(v)))

    @property
    def ok(self) -> bool:
        return bool(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    @property
    def low(self) -> float:
        return min(self.values) if self.values else math.nan

    @property
    def high(self) -> float:
        return max(self.values) if self.values else math.nan

    @property
    def spread_pct(self) -> float:
        """(max - min) / median, in percent: how far the repetitions disagree."""
        med = self.median
        if not self.values or med == 0:
            return math.nan
        return (self.high - self.low) / abs(med) * 100.0

    def fmt(self, digits: int = 0, scale: float = 1.0) -> str:
        if not self.values:
            return "n/a"
        med = self.median * scale
        lo = self.low * scale
        hi = self.high * scale
        if len(self.values) == 1:
            return f"{med:,.{digits}f}"
        return f"{med:,.{digits}f} [{lo:,.{digits}f}, {hi:,.{digits}f}]"
