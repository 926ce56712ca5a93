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


def save_weights(folder, tensors, name="model.safetensors"):
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, name))
    return os.path.join(folder, name)


def big_weights():
    import torch

    generator = torch.Generator().manual_seed(0)
    # a tensor of 1 MiB (sampled, not read whole) and a small one (read whole)
    return {"w": torch.randn(512, 512, generator=generator), "b": torch.randn(16, generator=generator)}


def test_a_model_retrained_to_the_same_bytes_is_the_same_model(tmp_path):
    """The chain's second run retrains the SFT model into its folder: the same bytes, a new modification time. It
    is the same model, so the pipeline resumes instead of refusing the folder."""
    from simpo.pipeline.work_units import weights_fingerprint

    weights = big_weights()
    path = save_weights(tmp_path / "sft", weights)
    first = weights_fingerprint(str(tmp_path / "sft"))
    stat = os.stat(path)
    os.remove(path)
    save_weights(tmp_path / "sft", {k: v.clone() for k, v in weights.items()})
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert os.stat(path).st_mtime_ns != stat.st_mtime_ns
    assert weights_fingerprint(str(tmp_path / "sft")) == first
    assert weights_fingerprint("org/hub-model") is None


@pytest.mark.parametrize(
    "change",
    [
        lambda w: {**w, "w": w["w"] * 1.001},  # training moves every weight of a tensor
        lambda w: {**w, "b": w["b"] + 1e-6},  # a small tensor, read whole
        lambda w: {"w": w["w"], "b2": w["b"]},  # a tensor renamed: the header
        lambda w: {**w, "b": w["b"].double()},  # another dtype
    ],
    ids=["every-weight", "small-tensor", "renamed", "dtype"],
)
def test_a_model_retrained_to_other_weights_is_another_model(tmp_path, change):
    from simpo.pipeline.work_units import weights_fingerprint

    weights = big_weights()
    save_weights(tmp_path / "a", weights)
    save_weights(tmp_path / "b", change(weights))
    assert weights_fingerprint(str(tmp_path / "a")) != weights_fingerprint(str(tmp_path / "b"))


def test_a_small_safetensors_file_is_digested_whole_and_a_bin_file_too(tmp_path):
    """Against hashlib over the file's bytes: a file whose tensors are all small is read entirely (size, header,
    then the tensors' bytes in file order, which is the whole file after its 8-byte length)."""
    import hashlib

    import torch

    from simpo.pipeline.work_units import weight_file_digest

    path = save_weights(tmp_path, {"a": torch.arange(10.0), "b": torch.ones(3, 4)})
    data = open(path, "rb").read()
    assert weight_file_digest(path) == hashlib.sha256(len(data).to_bytes(8, "little") + data[8:]).hexdigest()
    torch.save({"a": torch.arange(10.0)}, tmp_path / "pytorch_model.bin")
    data = open(tmp_path / "pytorch_model.bin", "rb").read()
    assert weight_file_digest(str(tmp_path / "pytorch_model.bin")) == hashlib.sha256(data).hexdigest()
