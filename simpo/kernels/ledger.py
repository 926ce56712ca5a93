"""KernelLedger: what the log-prob kernels ran and chose in one run, kept by the run that calls them (SimPOTrainer owns
one and passes it down), not in the modules: which kernel ran how often (what a benchmark row reports), the tiles the
Triton path chose per shape (measured once, then remembered), the warm-up that choice cost, and the LM heads whose
logits the fused path has checked. A caller that passes no ledger gets a fresh one per call: nothing is remembered
between its calls (the on-disk tile cache still is, simpo/kernels/tile_cache.py)."""

import weakref
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class KernelLedger:
    calls: Counter = field(default_factory=Counter)  # kernel name ("torch", "triton") -> calls that ran
    tiles: dict = field(default_factory=dict)  # tile-cache key -> (token tile, vocabulary tile) chosen
    warmup_seconds: float = 0.0  # spent measuring tiles
    measured: int = 0  # shapes whose tiles this run measured
    reused: int = 0  # shapes whose tiles came from the on-disk cache
    # LM head module -> the compute dtypes its logits were checked in (weak: a model freed is forgotten)
    heads_checked: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
