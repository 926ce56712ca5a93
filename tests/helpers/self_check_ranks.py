"""Test launcher for the self-check's agreement across processes (tests/train/test_self_check_ranks.py): on rank 1
only, the torch tiles' log-probs are shifted beyond the tolerance (a kernel wrong on one GPU of a node); and, as on a
GPU, the layouts are timed, by a stand-in clock for which rank 0 finds padding-free faster and rank 1 slower. Then
tests/helpers/dist_train.py's recipe and probe; each rank writes its decision to PROBE_DIR/decision<N>.json.

    accelerate launch --config_file CONFIG tests/helpers/self_check_ranks.py PROBE_DIR TRAINING.yaml [--key=value ...]
"""

import json
import os
import sys

import pytest
from dist_train import DistProbe, log_pairs
from fast_path_fakes import break_tiles, shifted_tiles

import simpo.train.self_check as self_check
from simpo.run.commands import exit_process
from simpo.train.recipe import train_main
from simpo.train.trainer import SimPOTrainer

# rank -> step seconds (padding-free, not padding-free)
CLOCK = {0: (1.0, 3.0), 1: (2.0, 1.0)}


def main() -> None:
    rank, probe_dir = int(os.environ["RANK"]), sys.argv[1]
    patch = pytest.MonkeyPatch()
    if rank == 1:
        break_tiles(patch, shifted_tiles(0.05))
    patch.setattr(self_check, "TIMED_DEVICES", ("cuda", "cpu"))
    patch.setattr(
        self_check.PathRunner, "step_seconds", lambda self, path: CLOCK[rank][0 if path.layout.padding_free else 1]
    )
    begin = self_check.SelfCheck.on_train_begin

    def recorded(self, *args, **kwargs):
        begin(self, *args, **kwargs)
        os.makedirs(probe_dir, exist_ok=True)
        with open(os.path.join(probe_dir, f"decision{rank}.json"), "w") as f:
            json.dump({**self.decision.to_dict(), "layout": self.trainer.layout.name}, f)

    patch.setattr(self_check.SelfCheck, "on_train_begin", recorded)
    log_pairs(SimPOTrainer)
    exit_process(train_main(sys.argv[2:], callbacks=[DistProbe(probe_dir)]))


if __name__ == "__main__":
    main()
