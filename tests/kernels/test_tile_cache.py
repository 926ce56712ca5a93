"""The Triton path's tile choice kept on disk (simpo/kernels/tile_cache.py), under the Triton interpreter: written
on the first measurement, reused by a later process without timing anything, measured again for another dtype,
shape or GPU name, and a corrupt file measured over."""

import json

import pytest
import torch

pytest.importorskip("triton")


@pytest.fixture
def kernels(monkeypatch, tmp_path):
    """triton_tiles with a fresh run's KernelLedger (`ledger`: its in-process memory and warm-up counts), a cache file
    under tmp_path and a stand-in clock that favours the 4096-wide vocabulary tile; `timed` lists the candidates
    timed."""
    from simpo.kernels import triton_tiles
    from simpo.kernels.ledger import KernelLedger

    monkeypatch.setenv("SIMPO_TILE_CACHE", str(tmp_path / "cache" / "tiles.json"))
    triton_tiles.ledger = KernelLedger()
    timed = []

    def clock(fn, warmup, rep):
        tiles = fn.__defaults__[0]  # the candidate (lambda c=c: run(c)); not run: the choice is what is tested
        timed.append(tiles)
        return 1.0 if tiles[1] == 4096 else 2.0

    monkeypatch.setattr(triton_tiles, "do_bench", clock)
    triton_tiles.timed = timed
    return triton_tiles


def choose(kernels, vocab=5000, dtype=torch.float32):
    torch.manual_seed(0)
    hidden, weight, labels = torch.randn(6, 8), torch.randn(vocab, 8) * 0.3, torch.randint(0, vocab, (6,))
    return kernels.choose_tiles(hidden, weight, None, labels, 1.0, None, dtype, (None, None), True, kernels.ledger)


def new_process(kernels, monkeypatch):
    kernels.ledger.tiles.clear()  # the in-process memory of the choice is gone; the counts go on
    kernels.timed.clear()


def test_the_choice_is_written_then_reused_without_timing(kernels, monkeypatch, tmp_path):
    assert choose(kernels) == (8, 4096) and len(kernels.timed) == 3
    stored = json.loads((tmp_path / "cache" / "tiles.json").read_text())
    key = f"cpu|float32|H8|V5000|bias=0|softcap=0|N8|triton {kernels.triton.__version__}"
    assert stored == {key: [8, 4096]}
    assert kernels.ledger.measured == 1 and kernels.ledger.warmup_seconds > 0

    new_process(kernels, monkeypatch)  # a relaunch, or another rank: nothing timed
    assert choose(kernels) == (8, 4096) and kernels.timed == []
    assert kernels.ledger.reused == 1 and kernels.ledger.measured == 1


@pytest.mark.parametrize("change", ["dtype", "shape", "gpu"])
def test_another_dtype_shape_or_gpu_is_measured_again(kernels, monkeypatch, tmp_path, change):
    choose(kernels)
    path = tmp_path / "cache" / "tiles.json"
    if change == "gpu":  # the entry as another GPU wrote it: not this device's
        stored = json.loads(path.read_text())
        path.write_text(json.dumps({k.replace("cpu|", "NVIDIA H200|"): [1, 2048] for k in stored}))
    new_process(kernels, monkeypatch)
    kwargs = {"dtype": {"dtype": torch.bfloat16}, "shape": {"vocab": 4500}, "gpu": {}}[change]
    choose(kernels, **kwargs)
    assert len(kernels.timed) == 3
    assert len(json.loads(path.read_text())) == 2  # the new entry beside the old


def test_a_corrupt_file_is_measured_over_and_left_valid(kernels, tmp_path):
    path = tmp_path / "cache" / "tiles.json"
    path.parent.mkdir()
    path.write_text('{"half a file":')
    assert choose(kernels) == (8, 4096) and len(kernels.timed) == 3
    assert list(json.loads(path.read_text()).values()) == [[8, 4096]]
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".tiles-")] == []  # no temporary left


def test_off_keeps_the_choice_in_memory_only(kernels, monkeypatch, tmp_path):
    monkeypatch.setenv("SIMPO_TILE_CACHE", "off")
    assert choose(kernels) == (8, 4096)
    assert not (tmp_path / "cache").exists()


def test_the_end_summary_reports_the_warm_up(kernels, monkeypatch):
    from simpo.train.reporting import warmup_lines

    assert warmup_lines(kernels.ledger) == []  # nothing chosen yet: no line (CPU runs, the torch tiles)
    choose(kernels)
    new_process(kernels, monkeypatch)
    choose(kernels)
    [line] = warmup_lines(kernels.ledger)
    assert "for 1 shape(s), 1 reused from " in line and line.endswith("tiles.json") and " s measuring" in line
