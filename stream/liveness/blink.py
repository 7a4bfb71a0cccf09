"""Blinks from a face's eye aspect ratio over time: the eyes close (the ratio falls well below the
face's own open-eye level) and open again within a blink's duration. The open level is the track's
own (a high quantile of what it has shown), so narrow and wide eyes both work."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class BlinkRules:
    closed: float = 0.7  # closed when below this fraction of the open level
    reopened: float = 0.85  # open again when above this fraction
    max_closed_s: float = 0.7  # longer closures are not blinks (a look down, a lost face)
    min_open_faces: int = 3  # faces with a measured ratio before the open level is trusted


@dataclass
class BlinkCounter:
    rules: BlinkRules = field(default_factory=BlinkRules)
    ratios: list[float] = field(default_factory=list)
    closed_at: float | None = None
    blinks: int = 0

    def open_level(self) -> float:
        return float(np.quantile(self.ratios, 0.8)) if self.ratios else 0.0

    def add(self, t: float, ratio: float) -> bool:
        """One face's eye aspect ratio (NaN: not measured); True when it completes a blink."""
        if not np.isfinite(ratio):
            return False
        ready = len(self.ratios) >= self.rules.min_open_faces
        level = self.open_level()
        self.ratios.append(float(ratio))
        if not ready or level <= 0:
            return False
        if self.closed_at is None:
            if ratio < self.rules.closed * level:
                self.closed_at = t
            return False
        if ratio > self.rules.reopened * level:
            done = t - self.closed_at <= self.rules.max_closed_s
            self.closed_at = None
            self.blinks += int(done)
            return done
        return False
