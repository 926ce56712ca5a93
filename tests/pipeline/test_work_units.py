"""Resumable, data-parallel work units: the split between processes, skipping finished units, settings checks."""

import json
import os

import pytest

from simpo.pipeline.work_units import Unit, UnitStore, check_settings, derived_seed, run_units, write_atomic

UNITS = [Unit(f"train/{i:06d}", "train", (2 * i, 2 * i + 1)) for i in range(7)]


def as_rank(monkeypatch, rank, world):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def test_two_processes_split_the_units_and_the_main_one_waits_for_all(tmp_path, monkeypatch):
    store, done = UnitStore(str(tmp_path)), []
    work = lambda unit: done.append(unit.name) or [sum(unit.rows)]
    as_rank(monkeypatch, 1, 2)
    assert run_units(UNITS, store, work, "test", poll_s=0.01) is False  # not the main process: no waiting
    assert done == [u.name for u in UNITS[1::2]]
    as_rank(monkeypatch, 0, 2)
    assert run_units(UNITS, store, work, "test", poll_s=0.01) is True
    assert sorted(done) == sorted(u.name for u in UNITS)  # each unit exactly once
    for n, unit in enumerate(UNITS):
        assert store.read(unit) == [sum(unit.rows)]
        with open(store.path(unit)) as f:
            assert json.load(f)["process"] == n % 2


def test_finished_units_are_not_done_again(tmp_path, monkeypatch):
    as_rank(monkeypatch, 0, 1)
    store = UnitStore(str(tmp_path))
    for unit in UNITS[:3]:
        store.write(unit, ["from the first run"])
    done = []
    run_units(UNITS, store, lambda unit: done.append(unit.name) or ["new"], "test")
    assert done == [u.name for u in UNITS[3:]]
    assert store.read(UNITS[0]) == ["from the first run"]


def test_a_unit_file_appears_whole_or_not_at_all(tmp_path):
    path = str(tmp_path / "a" / "unit.json")
    write_atomic(path, "x" * 1000)
    assert os.listdir(tmp_path / "a") == ["unit.json"]  # no temporary file left behind
    assert open(path).read() == "x" * 1000


def test_a_relaunch_with_other_settings_is_refused(tmp_path):
    settings = {"seeds": [13, 21], "temperature": 0.8}
    check_settings(str(tmp_path), settings)
    check_settings(str(tmp_path), dict(settings))  # the same: fine
    check_settings(str(tmp_path / "t"), {"decoding": (0.9, 1.0, 4)})
    check_settings(str(tmp_path / "t"), {"decoding": (0.9, 1.0, 4)})  # a tuple reads back as a list: still the same
    with pytest.raises(ValueError, match=r"other settings \(temperature; e.g. temperature: 0.8 then, 1.0 now\)"):
        check_settings(str(tmp_path), {**settings, "temperature": 1.0})


def test_derived_seeds_are_stable_and_distinct():
    assert derived_seed(13, "train", 0) == derived_seed(13, "train", 0)
    seeds = {derived_seed(seed, split, i) for seed in (13, 21) for split in ("train", "test") for i in range(100)}
    assert len(seeds) == 400 and all(0 <= s < 2**63 for s in seeds)
