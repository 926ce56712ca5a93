"""The start-up self-check (simpo/train/self_check/) on CPU, with fast paths made wrong on purpose
(tests/helpers/fast_path_fakes.py): each is caught, the run falls back and trains the same weights as a run told to use
the path it fell back to; a correct path is kept; an explicit setting that fails is refused with the figures; the
decision is reused from the cache on relaunch; on a GPU (faked: a stand-in clock) the fastest agreeing layout is kept.
The 2-process launch is tests/train/test_self_check_ranks.py."""

import json

import pytest
import torch
from conftest import REPO, TINY_MODEL, tiny_config, tiny_rows
from fast_path_fakes import (
    DoubledGradientTiles,
    RaisingTiles,
    break_tiles,
    leak_rejected_into_chosen,
    shifted_tiles,
    stand_in_liger,
)

import simpo.train.layouts
import simpo.train.self_check as self_check
from simpo.errors import FastPathError
from simpo.train.logps import plain_token_logps
from simpo.train.trainer import SimPOTrainer

LOGP_TOLERANCE, GRAD_TOLERANCE = self_check.TOLERANCE["float32"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_rows(16)


def trainer_for(tmp_path, tiny, name: str = "run", **settings) -> SimPOTrainer:
    tokenizer, rows = tiny
    defaults = dict(max_steps=2, logging_steps=1, per_device_train_batch_size=4)
    args = tiny_config(tmp_path / name, **{**defaults, **settings})
    return SimPOTrainer(TINY_MODEL, args=args, train_dataset=rows, processing_class=tokenizer)


def trained(tmp_path, tiny, name: str, **settings) -> tuple[SimPOTrainer, dict]:
    trainer = trainer_for(tmp_path, tiny, name, **settings)
    trainer.train()
    return trainer, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def checked(trainer: SimPOTrainer) -> "self_check.Decision":
    """The check as training begins, without training."""
    trainer.self_check.on_train_begin(trainer.args, trainer.state, trainer.control)
    return trainer.self_check.decision


def rows_by_path(decision) -> dict:
    return {row.path: row for row in decision.rows}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_a_correct_path_is_kept_and_every_comparison_is_rounding(tmp_path, tiny):
    trainer = trainer_for(tmp_path, tiny)
    decision = checked(trainer)
    assert decision.path.name == "prefix sharing (dense masks), torch tiles" and decision.source == "checked"
    assert decision.gradients == "gradients compared"
    rows = rows_by_path(decision)
    [row] = rows.values()  # the best options together agree: nothing else runs
    assert (row.check, row.path) == ("together", "prefix sharing (dense masks), torch tiles")
    assert row.verdict == "agrees" and row.logp_error < 1e-5 and row.grad_error < 1e-5  # fp32: rounding alone
    assert trainer.layout.name == "prefix sharing" and trainer.token_logps.func.__name__ == "fused_token_logps"


def test_a_shift_under_the_tolerance_is_kept_and_one_over_it_rejected(tmp_path, tiny, monkeypatch):
    break_tiles(monkeypatch, shifted_tiles(0.3 * LOGP_TOLERANCE))
    kept = rows_by_path(checked(trainer_for(tmp_path, tiny, "kept")))["prefix sharing (dense masks), torch tiles"]
    assert kept.verdict == "agrees" and kept.logp_error == pytest.approx(0.3 * LOGP_TOLERANCE, rel=1e-2)
    break_tiles(monkeypatch, shifted_tiles(3 * LOGP_TOLERANCE))
    decision = checked(trainer_for(tmp_path, tiny, "rejected"))
    rejected = rows_by_path(decision)["plain, torch tiles"]
    assert rejected.verdict == "differs" and rejected.logp_error == pytest.approx(3 * LOGP_TOLERANCE, rel=1e-2)
    assert rejected.grad_error < 1e-5  # a constant shift leaves the gradients as they were
    assert decision.path.logps == "full logits"


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault,verdict",
    [
        (shifted_tiles(0.05), "differs"),
        (RaisingTiles, "raised: RuntimeError: CUDA error"),
        (DoubledGradientTiles, "differs"),
    ],
    ids=["shifted", "raises", "wrong-gradient"],
)
def test_a_wrong_kernel_falls_back_to_full_logits_and_trains_what_they_train(
    tmp_path, tiny, monkeypatch, fault, verdict
):
    plain, plain_weights = trained(tmp_path, tiny, "plain", fused_logps=False)
    break_tiles(monkeypatch, fault)
    trainer, weights = trained(tmp_path, tiny, "faulty")
    row = rows_by_path(trainer.self_check.decision)["plain, torch tiles"]
    assert row.verdict.startswith(verdict)
    if fault is DoubledGradientTiles:  # the log-probs are right: only the gradients tell
        assert row.logp_error < 1e-5 and row.grad_error == pytest.approx(1.0, rel=1e-3)
    assert trainer.self_check.decision.path == plain.self_check.decision.path
    assert trainer.token_logps is plain_token_logps
    assert_same_weights(weights, plain_weights)


@pytest.fixture
def flex_on_cpu(monkeypatch):
    """flex_attention auto offered as on a GPU (forward only here: the check compares log-probs alone), with
    transformers' flex compile on dynamo's eager backend (tests/train/test_flex_compiles.py)."""
    from transformers.integrations import flex_attention as hf_flex

    monkeypatch.setattr(simpo.train.layouts, "uses_flex", lambda args: args.flex_attention is not False)
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, dynamic=False, backend="eager"))
    monkeypatch.setattr(hf_flex.WrappedFlexAttention, "_instance", None)
    monkeypatch.setattr(hf_flex.WrappedFlexAttention, "_is_flex_compiled", False)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_a_flex_mask_that_lets_rejected_see_chosen_falls_back_to_dense_masks(tmp_path, tiny, monkeypatch, flex_on_cpu):
    dense, dense_weights = trained(tmp_path, tiny, "dense", flex_attention=False)
    leak_rejected_into_chosen(monkeypatch, only_flex=True)
    trainer, weights = trained(tmp_path, tiny, "flex")
    rows = rows_by_path(trainer.self_check.decision)
    leaky = rows["prefix sharing (FlexAttention block masks), full logits"]
    assert leaky.verdict == "differs" and leaky.logp_error > 2 * LOGP_TOLERANCE and leaky.grad_error is None
    assert rows["prefix sharing + padding-free (FlexAttention block masks), full logits"].verdict == "differs"
    assert trainer.self_check.decision.path == dense.self_check.decision.path
    assert trainer.layout.name == "prefix sharing" and trainer.model.config._attn_implementation == "sdpa"
    assert_same_weights(weights, dense_weights)


@pytest.mark.slow
def test_a_correct_flex_mask_is_kept(tmp_path, tiny, flex_on_cpu):
    trainer = trainer_for(tmp_path, tiny)
    decision = checked(trainer)
    row = rows_by_path(decision)["prefix sharing (FlexAttention block masks), torch tiles"]
    assert row.verdict == "agrees" and row.logp_error < 1e-4 and row.grad_error is None  # no flex backward on CPU
    assert decision.path.layout.flex and trainer.model.config._attn_implementation == "flex_attention"


def test_without_a_measurement_padding_free_auto_stays_off_and_is_not_even_checked(tmp_path, tiny):
    decision = checked(trainer_for(tmp_path, tiny))
    assert not decision.path.layout.padding_free
    assert not any("padding-free" in row.path for row in decision.rows)


def test_on_a_gpu_the_fastest_agreeing_layout_is_kept(tmp_path, tiny, monkeypatch):
    """A GPU's choice, with a stand-in clock for which padding-free is twice as fast: both layouts are checked,
    both agree, both are timed, and the faster is kept; the plain layout, a fallback, is not timed."""
    monkeypatch.setattr(self_check, "TIMED_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(self_check.PathRunner, "step_seconds", lambda self, path: 1.0 + (not path.layout.padding_free))
    trainer = trainer_for(tmp_path, tiny)
    decision = checked(trainer)
    rows = rows_by_path(decision)
    packed, padded = (rows[f"prefix sharing{p} (dense masks), torch tiles"] for p in (" + padding-free", ""))
    assert (packed.verdict, packed.step_seconds) == ("kept", 1.0)
    assert (padded.verdict, padded.step_seconds) == ("faster one kept", 2.0)
    assert decision.path.layout.padding_free and trainer.layout.padding_free
    assert "kept prefix sharing + padding-free (dense masks), torch tiles: 1000.0 ms a step" in "\n".join(
        self_check.decision_lines(decision)
    )


@pytest.mark.parametrize(
    "settings,fault,pattern",
    [
        (
            dict(prefix_sharing=True, fused_logps=False),
            "mask",
            r"^prefix_sharing: true, but that path failed the start-up self-check on cpu \(float32\): prefix sharing "
            r"\(dense masks\), full logits: average log-probs differ from the plain path's by 0\.\d+ \(tolerance "
            r"0\.001\), gradients by \d\.\d+ relative \(tolerance 0\.001\); prefix sharing \+ padding-free "
            r"\(dense masks\), full logits: .*\. Training on it would be wrong: set prefix_sharing: auto to fall back"
            r" where it differs, or false\.$",
        ),
        (
            dict(liger_kernels=True, prefix_sharing=False, fused_logps=False),
            "liger",
            r"^liger_kernels: true, but that path failed .* plain, full logits, Liger: average log-probs differ from "
            r"the plain path's by \d+\.\d+ \(tolerance 0\.001\)",
        ),
        (
            dict(prefix_sharing=False),
            "kernel",
            r"^SIMPO_LOGPS_KERNEL=torch, but that path failed .*: plain, torch tiles: raised: RuntimeError: CUDA error",
        ),
    ],
    ids=["prefix_sharing", "liger_kernels", "SIMPO_LOGPS_KERNEL"],
)
def test_an_explicit_setting_that_fails_is_refused_with_the_figures(
    tmp_path, tiny, monkeypatch, settings, fault, pattern
):
    if fault == "mask":
        leak_rejected_into_chosen(monkeypatch, only_flex=False)
    elif fault == "liger":
        stand_in_liger(monkeypatch, norm_scale=1.5)
    else:
        monkeypatch.setenv("SIMPO_LOGPS_KERNEL", "torch")
        break_tiles(monkeypatch, RaisingTiles)
    trainer = trainer_for(tmp_path, tiny, **settings)
    with pytest.raises(FastPathError, match=pattern):
        trainer.train()
    assert trainer.state.global_step == 0


def test_liger_rejected_at_auto_is_switched_off_and_a_correct_one_kept(tmp_path, tiny, monkeypatch):
    from transformers.models.llama import modeling_llama

    rotary = modeling_llama.apply_rotary_pos_emb
    stand_in_liger(monkeypatch, norm_scale=1.5, on_cpu=True)
    trainer = trainer_for(tmp_path, tiny, "wrong")
    decision = checked(trainer)
    assert rows_by_path(decision)["plain, full logits, Liger"].verdict == "differs"
    assert decision.path.liger is False and trainer.liger.startswith("off (the start-up self-check rejected")
    norms = [m for m in trainer.model.modules() if isinstance(m, modeling_llama.LlamaRMSNorm)]
    assert norms and not any("forward" in vars(m) for m in norms)  # Liger's patch undone
    assert modeling_llama.apply_rotary_pos_emb is rotary

    stand_in_liger(monkeypatch, norm_scale=1.0, on_cpu=True)
    trainer = trainer_for(tmp_path, tiny, "right")
    decision = checked(trainer)
    row = rows_by_path(decision)["prefix sharing (dense masks), torch tiles, Liger"]
    assert decision.path.liger is True and row.verdict == "agrees"
    assert all("forward" in vars(m) for m in trainer.model.modules() if isinstance(m, modeling_llama.LlamaRMSNorm))


@pytest.fixture
def cache(monkeypatch, tmp_path):
    path = tmp_path / "cache" / "self_check.json"
    monkeypatch.setenv("SIMPO_SELF_CHECK_CACHE", str(path))
    runs = []
    real = self_check.PathRunner.run
    monkeypatch.setattr(self_check.PathRunner, "run", lambda self, p: runs.append(p) or real(self, p))
    return path, runs


def test_the_decision_is_kept_on_disk_and_reused_on_relaunch(tmp_path, tiny, monkeypatch, cache):
    path, runs = cache
    break_tiles(monkeypatch, shifted_tiles(0.05))
    first = checked(trainer_for(tmp_path, tiny, "first"))
    assert first.source == "checked" and first.path.logps == "full logits" and len(runs) == 4
    [(key, stored)] = json.loads(path.read_text()).items()
    assert key.startswith("cpu | float32 | model ") and "batch 4 | 4 pairs, at most 128 tokens" in key
    assert stored["path"]["logps"] == "full logits"

    runs.clear()  # a relaunch: nothing runs, the same path and figures
    again = checked(trainer_for(tmp_path, tiny, "again"))
    assert runs == [] and again.source == f"from the cache ({path})"
    assert again.path == first.path and again.rows == first.rows
    assert "rejected plain, torch tiles: average log-probs differ" in "\n".join(self_check.decision_lines(again))

    for settings in (dict(self_check="always"), dict(per_device_train_batch_size=2), dict(padding_free=False)):
        runs.clear()
        assert checked(trainer_for(tmp_path, tiny, "other", **settings)).source == "checked" and runs, settings
    runs.clear()
    off = checked(trainer_for(tmp_path, tiny, "off", self_check="off"))
    assert runs == [] and off.source == "not checked (self_check: off)" and off.path.logps == "torch tiles"


def test_a_cached_decision_that_leaves_out_an_explicit_setting_is_refused(tmp_path, tiny, monkeypatch, cache):
    monkeypatch.setenv("SIMPO_LOGPS_KERNEL", "torch")  # same options as auto on a CPU: the same cache entry
    break_tiles(monkeypatch, shifted_tiles(0.05))
    monkeypatch.delenv("SIMPO_LOGPS_KERNEL")
    assert checked(trainer_for(tmp_path, tiny, "auto")).path.logps == "full logits"
    monkeypatch.setenv("SIMPO_LOGPS_KERNEL", "torch")
    _, runs = cache
    runs.clear()
    with pytest.raises(FastPathError, match=r"^SIMPO_LOGPS_KERNEL=torch, but .* by 0\.05 \(tolerance 0\.001\)"):
        checked(trainer_for(tmp_path, tiny, "explicit"))
    assert runs == []


def test_the_check_leaves_the_random_state_and_the_gradients_as_they_were(tmp_path, tiny):
    trainer = trainer_for(tmp_path, tiny)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    checked(trainer)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(p.grad is None for p in trainer.model.parameters())
    assert not trainer.model.training  # as the check found it


@pytest.mark.slow
def test_the_recipe_says_what_it_rejected_in_its_summaries_and_run_config(tmp_path, monkeypatch, capsys):
    """The user's view: the start summary and run_config.yaml name the rejected path, its figures and what runs
    instead; the end summary the check's seconds; and the run trains what fused_logps: false trains."""
    from safetensors.torch import load_file

    from simpo.train.recipe import train_main

    def run(name, *overrides):
        out = tmp_path / name
        train_main(
            [
                f"{REPO}/training_configs/tiny-simpo-cpu.yaml",
                f"--output_dir={out}",
                "--report_to=none",
                "--max_steps=3",
                "--eval_strategy=no",
                "--do_eval=false",
                "--eval_on_start=false",
                *overrides,
            ]
        )
        return out

    plain = run("plain", "--fused_logps=false")
    break_tiles(monkeypatch, shifted_tiles(0.05))
    capsys.readouterr()
    faulty = run("faulty")
    printed = capsys.readouterr().out
    start = printed.split("SimPO run finished")[0]
    assert "runs prefix sharing (dense masks), full logits" in start
    rejected = (
        "rejected plain, torch tiles: average log-probs differ from the plain path's by 0.05 (tolerance 0.001),"
        " gradients by "
    )
    assert rejected in start
    end = printed.split("SimPO run finished")[1]
    assert "self-check" in end and " s: 3 path(s) checked against the plain one" in end
    note = (faulty / "run_config.yaml").read_text().split("# start-up self-check:\n")[1]
    assert "runs prefix sharing (dense masks), full logits" in note and rejected in note
    assert all(line.startswith("#") for line in note.splitlines())  # the file still launches the same run
    a, b = load_file(plain / "model.safetensors"), load_file(faulty / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
