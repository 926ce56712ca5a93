"""benchmarks/gpu_train.py: the memory-budget search, the config each row gets, and the --smoke run end to end (every
row and the budget search in CPU processes; the JSON and Markdown it writes, checked against an independent
computation of the first step's loss and of the real tokens)."""

import json
import math
import os
import subprocess
import sys

import gpu_train
import gpu_train_budget
import gpu_train_setup
import pytest
import torch
from conftest import REPO, log_sigmoid, reference_avg_logp

from simpo.data.tokenization import tokenize_row
from simpo.errors import ConfigError


def search(limit: int, start: int, step: int = 8, max_batch: int = 128, max_tries: int = 10, stop_at=None):
    calls = []

    def fits(batch):
        calls.append(batch)
        return None if batch == stop_at else batch <= limit

    return gpu_train_budget.largest_fitting_batch(fits, start, step, max_batch, max_tries), calls


@pytest.mark.parametrize("limit, start", [(37, 8), (37, 64), (37, 36), (8, 128), (127, 40)])
def test_search_finds_the_largest_batch_that_fits(limit, start):
    found, calls = search(limit, start)
    expected = limit // 8 * 8
    assert found["largest"] == expected and found["smallest_misfit"] == expected + 8 and found["bound"] == "exact"
    assert calls == found["tried"] and len(set(calls)) == len(calls)  # no batch tried twice


def test_search_cap_nothing_fits_and_stops():
    found, calls = search(limit=1000, start=24)
    assert (found["largest"], found["bound"], calls) == (128, "cap", [24, 48, 96, 128])
    found, calls = search(limit=3, start=40)
    assert (found["largest"], found["smallest_misfit"], found["bound"], calls) == (None, 8, "exact", [40, 16, 8])
    found, calls = search(limit=100, start=8, max_tries=2)  # out of tries
    assert (found["largest"], found["bound"]) == (16, "open")
    found, calls = search(limit=100, start=8, stop_at=32)  # a run that says nothing about memory ends the search
    assert (found["largest"], found["bound"], found["tried"], calls) == (16, "open", [8, 16], [8, 16, 32])


def test_config_keys_that_would_do_nothing_are_errors(tmp_path):
    base = {"output_dir": str(tmp_path / "out")}
    with pytest.raises(ConfigError, match="Did you mean 'prefix_sharing'"):
        gpu_train_setup.parse_config({**base, "prefix_sharng": False}, tmp_path)
    with pytest.raises(ValueError, match=r"\['chat_template'\] would have no effect"):
        gpu_train_setup.parse_config({**base, "chat_template": "{{ messages }}"}, tmp_path)
    _, args = gpu_train_setup.parse_config({**base, "padding_free": True}, tmp_path)
    assert args.padding_free is True


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_train")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "gpu_train.py"), "--smoke", "--out-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [json_path] = out.glob("gpu_train_smoke-cpu_*.json")
    return json.loads(json_path.read_text()), json_path.with_suffix(".md").read_text()


def first_pairs(settings: dict, count: int) -> tuple[list[dict], object]:
    tokenizer = gpu_train_setup.word_tokenizer(settings["shape"]["vocab_size"])
    pairs = gpu_train_setup.synthetic_pairs(count, settings["lengths"], settings["shape"]["vocab_size"], seed=0)
    return [tokenize_row(p, tokenizer, settings["max_length"], settings["max_prompt_length"]) for p in pairs], tokenizer


@pytest.mark.slow
def test_smoke_table_rows_and_what_they_ran(smoke):
    results, markdown = smoke
    s = results["settings"]
    rows = {r["system"]: r for r in results["table"]}
    assert [r["system"] for r in results["table"]] == [x.name for x in gpu_train.SYSTEMS]
    for system in gpu_train.SYSTEMS:
        row = rows[system.name]
        assert system.label in markdown
        if system.requires and row["status"] != "ok":
            assert row["status"] == f"skipped: {system.requires} is not installed"
            continue
        if system.gpu_only:
            assert row["status"].startswith("skipped: GPU runs only")
            continue
        assert row["status"] == "ok", row
        for key in ("pairs_per_s", "tokens_per_s", "timed_seconds", "peak_rss_gib"):
            assert row[key] > 0, key
        assert row["pairs_per_s"] == pytest.approx(s["timed"] * s["batch"] / row["timed_seconds"])
        assert row["x_trl"]["pairs_per_s"] > 0 and row["x_simpo_plain"]["memory"] > 0
        # simpo's default rows checkpoint on auto, which is off without CUDA; the others as the shared config sets
        auto = system.keys.get("activation_checkpointing") == "auto"
        assert row["activation_checkpointing"] is not auto and row["attention"] == "sdpa"
        # what really ran, never "auto": the torch tiles on CPU, the plain path's full logits, or TRL's own
        expected = {"trl": "trl + liger" if system.keys.get("use_liger_kernel") else "trl"}.get(
            system.trainer, "torch tiles" if system.keys.get("fused_logps", True) else "plain (full logits)"
        )
        assert row["logps_kernel"] == expected, row
        assert row["first_step_s"] > 0 and row["graphs"] == 0 and row["tile_warmup_s"] == 0  # eager, torch tiles
    # Each row's keys reached the trainer: its batch layout and log-prob path.
    assert rows["simpo"]["layout"] == "prefix sharing" and rows["simpo"]["fused_logps"] is True
    assert rows["simpo_no_prefix"]["layout"] == "plain" and rows["simpo_no_prefix"]["fused_logps"] is True
    assert rows["simpo_padding_free"]["layout"] == "prefix sharing + padding-free"
    assert rows["simpo_dense_masks"]["layout"] == "prefix sharing"  # on a CPU auto gives dense masks too
    assert rows["simpo_plain"]["layout"] == "plain" and rows["simpo_plain"]["fused_logps"] is False
    assert rows["trl"]["layout"] == "DPODataCollatorWithPadding"
    assert rows["simpo"]["liger"] == "off (auto: no CUDA device; Liger's kernels run on GPUs)"
    assert "| simpo | torch tiles | sdpa | False |" in markdown  # the what-ran table

    # The parameter count of the smoke shape, by formula: embedding (tied with the head), per layer q/o, k/v, MLP,
    # two norms, and the final norm.
    shape = s["shape"]
    h, kv = shape["hidden_size"], shape["hidden_size"] // shape["num_attention_heads"] * shape["num_key_value_heads"]
    layer = 2 * h * h + 2 * h * kv + 3 * h * shape["intermediate_size"] + 2 * h
    assert results["params"] == shape["vocab_size"] * h + shape["num_hidden_layers"] * layer + h

    # Real tokens of the timed step (pairs batch .. 2 * batch - 1), from the tokenizer through simpo's tokenize_row.
    features, _ = first_pairs(s, 2 * s["batch"])
    timed = features[s["warmup"] * s["batch"] :]
    tokens = sum(len(f["chosen_input_ids"]) + len(f["rejected_input_ids"]) for f in timed)
    assert {r["timed_tokens"] for r in rows.values() if r["status"] == "ok"} == {tokens}


@pytest.mark.slow
def test_smoke_first_step_losses_equal_simpo_loss_of_the_first_batch(smoke, tmp_path):
    results, markdown = smoke
    s = results["settings"]
    features, tokenizer = first_pairs(s, s["batch"])
    config = gpu_train.shared_config(s, s["batch"], 2, str(tmp_path / "out"))
    model_args, args = gpu_train_setup.parse_config(config, tmp_path)
    model = gpu_train_setup.build_model(s["shape"], tokenizer, model_args, args, "cpu").eval()
    beta, gamma = config["beta"], config["beta"] * config["gamma_beta_ratio"]
    losses = []
    for f in features:  # one unpadded sequence at a time
        chosen = reference_avg_logp(model, f["chosen_input_ids"], f["chosen_labels"])
        rejected = reference_avg_logp(model, f["rejected_input_ids"], f["rejected_labels"])
        losses.append(-log_sigmoid(beta * (chosen - rejected) - gamma))
    expected = sum(losses) / len(losses)
    ran = [r for r in results["table"] if r["status"] == "ok"]
    assert len(ran) >= 5
    for row in ran:
        assert row["first_loss"] == pytest.approx(expected, abs=1e-5), row["system"]
    assert results["max_abs_loss_difference"] < 1e-5
    assert "First-step losses: all within" in markdown
    assert not math.isclose(expected, math.log1p(math.exp(gamma)), abs_tol=1e-3)  # the models' logps do matter


@pytest.mark.slow
def test_smoke_memory_budget_search(smoke):
    results, markdown = smoke
    s = results["settings"]
    assert "## Largest per-device batch in a simulated budget" in markdown
    table = {r["system"]: r for r in results["table"]}
    for row in results["budget"]:
        if table[row["system"]]["status"] != "ok":
            assert row["status"].startswith("not searched")
            continue
        tries = {int(b): t for b, t in row["tries"].items()}
        assert tries and row["bound"] in ("exact", "cap", "open")
        assert all(t["status"] in ("ok", "oom") for t in tries.values()), tries
        assert all(b % s["budget_step"] == 0 and b <= s["budget_max_batch"] for b in tries)
        if row["largest"] is not None:
            assert tries[row["largest"]]["status"] == "ok" and row["pairs_per_s"] > 0
        # every size above the largest that fits was tried and did not fit
        assert all(t["status"] == "oom" for b, t in tries.items() if b > (row["largest"] or 0))
        if row["bound"] == "exact":
            assert tries[row["smallest_misfit"]]["status"] == "oom"
            assert row["smallest_misfit"] - (row["largest"] or 0) <= s["budget_step"]
    # the simulated budget is a real limit: allocations past it fail as out-of-memory errors
    oom = [t for r in results["budget"] for t in r.get("tries", {}).values() if t["status"] == "oom"]
    assert all("can't allocate memory" in t["error"] for t in oom)


@pytest.mark.slow
def test_data_segment_limit_makes_an_allocation_fail():
    """The mechanism of the simulated budget, in a child process: RLIMIT_DATA makes a large torch allocation fail
    with the CPU allocator's out-of-memory error, which the worker reports as "oom"."""
    code = (
        "import resource, sys, torch; sys.path.insert(0, 'benchmarks'); import gpu_train_worker as w\n"
        "limit = w.data_segment_bytes() + 2**26\n"
        "resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))\n"
        "small = torch.ones(2**20)\n"
        "try:\n    torch.ones(2**26)\nexcept RuntimeError as e:\n"
        "    print(any(m in str(e).lower() for m in w.OOM_MESSAGES))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.stdout.strip() == "True", proc.stderr[-2000:]
    assert torch.ones(2**26).numel() == 2**26  # the test process itself is not limited


def test_budget_search_starts_from_the_table_runs_memory_and_time():
    s = gpu_train.SETTINGS["gpu"]
    # 10 GiB of weights and optimizer state, 26 GiB reserved at 8 pairs: 2 GiB a pair; 90% of 80 GiB holds 31 pairs.
    row = {
        "status": "ok",
        "static_gib": 10.0,
        "peak_reserved_gib": 26.0,
        "wall_s": 40.0,
        "timed_seconds": 12.0,
        "pairs_per_s": 8.0,
    }
    assert gpu_train_budget.predicted_batch(row, 80.0, 8) == 31
    assert gpu_train_budget.predicted_batch({"status": "ok"}, 80.0, 8) == 8  # no GPU figures: the table's batch
    # 40 s of which 12 * 15 / 12 = 15 s were steps: 25 s outside them, then 3 steps of 32 pairs at 8 pairs/s
    assert gpu_train_budget.predicted_seconds(row, s, 32) == pytest.approx(25 + 3 * 32 / 8)


def test_report_of_gpu_runs(tmp_path):
    """The GPU side of the report, from made-up figures: MFU against the H200's peak, ratios, the tables."""
    import gpu_train_report

    s = gpu_train.SETTINGS["gpu"]
    common = {"status": "ok", "params": 1_235_814_400, "device_name": "NVIDIA H200", "peak_reserved_gib": 50.0}
    table = [
        {
            "system": "trl",
            "label": "TRL",
            "pairs_per_s": 10.0,
            "tokens_per_s": 10_000.0,
            "peak_allocated_gib": 40.0,
            "first_loss": 1.3130,
            **common,
        },
        {
            "system": "simpo",
            "label": "simpo",
            "pairs_per_s": 15.0,
            "tokens_per_s": 15_000.0,
            "peak_allocated_gib": 13.0,
            "first_loss": 1.3136,
            **common,
        },
        {"system": "simpo_plain", "label": "plain", "status": "failed: exit code -9 without a result"},
    ]
    budget = [
        {
            "system": "trl",
            "label": "TRL",
            "status": "ok",
            "largest": 16,
            "bound": "exact",
            "pairs_per_s": 12.0,
            "tries": {"16": {"status": "ok"}, "24": {"status": "oom"}},
        },
        {
            "system": "simpo",
            "label": "simpo",
            "status": "ok",
            "largest": 128,
            "bound": "cap",
            "pairs_per_s": 30.0,
            "fastest_batch": 128,
            "fastest_pairs_per_s": 30.0,
            "tries": {"88": {"status": "ok"}, "128": {"status": "ok"}},
        },
    ]
    results = gpu_train_report.assemble(s, False, table, budget, 400.0, {"start_method": "forkserver", "startup_s": 20})
    assert results["device"] == "NVIDIA H200" and results["peak_tflops"] == 989
    assert table[1]["mfu"] == pytest.approx(6 * 1_235_814_400 * 15_000 / 989e12)
    assert table[1]["x_trl"] == pytest.approx({"pairs_per_s": 1.5, "memory": 13 / 40})
    assert "x_simpo_plain" not in table[1]  # the plain path failed: no ratio against it
    assert budget[1]["x_trl"] == pytest.approx({"pairs_per_s": 2.5, "batch": 8.0})
    assert results["max_abs_loss_difference"] == pytest.approx(6e-4)
    stem = gpu_train_report.write(results, tmp_path)
    assert stem.name.startswith("gpu_train_h200_")
    markdown = stem.with_suffix(".md").read_text()
    assert "| simpo | 15.00 | 1.50 | - | 15,000 | 13.00 | 0.33 | - | 50.00 | 11.2% | 1.31360 | ok |" in markdown
    assert "| plain | - |" in markdown and "failed: exit code -9 without a result" in markdown
    assert "## Largest per-device batch in 80 GiB of GPU memory" in markdown
    assert "| simpo | 128 | cap | 30.00 | 2.50 | - | - | 30.00 pairs/s at 128 | 88: ok, 128: ok |" in markdown
    assert json.loads(stem.with_suffix(".json").read_text())["table"][1]["mfu"] == table[1]["mfu"]
