"""What one run measured: every figure's repetitions under a key, the comparators that were not
available and why, and the noise of each phase. Ratios between two comparators are taken
repetition by repetition (they ran back to back), then summarised."""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

from bench.stats import Summary

Key = tuple[str, ...]


@attrs.frozen
class PhaseNoise:
    seconds: float
    foreign_cores: float  # CPU used by processes that are not the bench's
    load: str  # the load average when the phase began


@attrs.define
class Results:
    figures: dict[Key, list[float]] = attrs.field(factory=dict)
    notes: list[str] = attrs.field(factory=list)
    unavailable: dict[Key, str] = attrs.field(factory=dict)
    # (loop, transport, phase) -> its noise
    noise: dict[Key, PhaseNoise] = attrs.field(factory=dict)

    def add(self, key: Key, value: float) -> None:
        self.figures.setdefault(key, []).append(value)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def get(self, key: Key) -> Summary:
        return Summary.of(self.figures.get(key, []))

    def paired(self, a: Key, b: Key, combine: Callable[[float, float], float]) -> Summary:
        """combine(a, b) per repetition: both were measured in the same repetitions, in the
        same order, so the i-th values belong together (a comparator that dropped out kept
        only its first values)."""
        pairs = zip(self.figures.get(a, []), self.figures.get(b, []), strict=False)
        return Summary.of([combine(x, y) for x, y in pairs])  # NaN (from either) is dropped

    def ratio(self, a: Key, b: Key) -> Summary:
        return self.paired(a, b, _ratio)

    def difference(self, a: Key, b: Key) -> Summary:
        return self.paired(a, b, _difference)


def _ratio(x: float, y: float) -> float:
    return x / y if y else math.nan


def _difference(x: float, y: float) -> float:
    return x - y
