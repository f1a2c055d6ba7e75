"""Calibration statistics kept between ``--search`` points, within a byte budget.

The calibration pass (input second moments C of every module in the *reference* model) depends
on the reference (α, amplify mode, inputs) and the calibration batches, not on the scorer, the
mask ratio, ActSVD's keep fraction, the unit or the selection. A grid over those reuses one pass:
the cached per-layer statistics are replayed into the next point's scoring in the same order, so
its masks are bit-identical to a fresh pass. The cache holds at most ``STATS_CACHE_BYTES`` of
statistics (a d_in × d_in float32 matrix per distinct linear input); a pass that would not fit is
not kept and later points recompute it, so memory stays bounded whatever the model size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmguard.io.calibration import SecondMoment

STATS_CACHE_BYTES = 1 << 30

#: NlsrOptions fields the calibration statistics (and their tokenised batches) depend on
KEY_FIELDS = ("finetuned", "aligned", "base", "reference", "alpha", "amplify_mode", "calibration", "calibration_pairs",
              "prompt_field", "response_field", "template", "calibration_samples", "max_length", "max_response_tokens",
              "batch_tokens", "seed", "skip_bad", "calibration_mode", "device")


@dataclass
class CachedStatistics:
    layers: list[tuple[int, dict[str, SecondMoment]]]
    modules: set[str]
    data_record: dict[str, Any]
    nbytes: int = 0


@dataclass
class StatisticsRecorder:
    """Copies each layer's statistics (on the CPU, sharing kept) as the pass delivers them."""

    cache: "StatisticsCache"
    key: tuple
    data_record: dict[str, Any]
    layers: list[tuple[int, dict[str, SecondMoment]]] = field(default_factory=list)
    nbytes: int = 0
    overflow: bool = False

    def on_layer(self, index: int, stats: dict[str, SecondMoment]) -> None:
        if self.overflow:
            return
        seen: dict[int, SecondMoment] = {}
        copied = {}
        for name, stat in stats.items():
            kept = seen.get(id(stat))
            if kept is None:
                kept = seen[id(stat)] = SecondMoment(stat.xtx.detach().to("cpu", copy=True), stat.tokens, list(stat.modules))
                self.nbytes += kept.xtx.numel() * kept.xtx.element_size()
            copied[name] = kept
        if self.cache.used + self.nbytes > self.cache.budget:
            self.overflow, self.layers = True, []
            return
        self.layers.append((index, copied))

    def commit(self) -> None:
        if not self.overflow:
            modules = {name for _, stats in self.layers for name in stats}
            self.cache.entries[self.key] = CachedStatistics(self.layers, modules, dict(self.data_record), self.nbytes)


class StatisticsCache:
    def __init__(self, budget: int = STATS_CACHE_BYTES) -> None:
        self.budget = budget
        self.entries: dict[tuple, CachedStatistics] = {}
        self.passes = 0  # calibration passes run
        self.replays = 0  # points served from the cache

    @property
    def used(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    @staticmethod
    def key(options: Any) -> tuple:
        return tuple(getattr(options, name) for name in KEY_FIELDS)

    def get(self, options: Any, modules: list[str]) -> CachedStatistics | None:
        entry = self.entries.get(self.key(options))
        if entry is None or not set(modules) <= entry.modules:
            return None
        self.replays += 1
        return entry

    def recorder(self, options: Any, data_record: dict[str, Any]) -> StatisticsRecorder:
        self.passes += 1
        return StatisticsRecorder(self, self.key(options), data_record)
