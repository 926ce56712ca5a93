"""What a GPU run meets, reproduced on CPU: the first GPU run crashed at step 1 under DDP in bf16.

On a GPU the paper configs train with `bf16: true`. accelerate then runs the model's forward under bf16 autocast and
hands back fp32 outputs; the model may be loaded in bf16; cuBLAS computes the head's logits with another blocking
than the fused path's tiles (and, by default, sums split-K partials in bf16); gradient checkpointing is on; the
processes talk over NCCL. Each test reproduces one of these with what a CPU has: accelerate's own output wrapper
around CPU autocast, bf16 weights, a head whose forward sums in bf16 split-K partials (set as an instance-level
forward, as accelerate's hooks do), and gloo DDP, DeepSpeed ZeRO-3 and FSDP2 in 2 processes.
"""

import json
import os
import subprocess
import sys
from types import MethodType

import pytest
import torch
from bf16_cases import BF16, accelerate_bf16
from conftest import REPO, tiny_config
from logps_cases import PLAIN, assert_fused_equals_plain, call, features, logps_loss_and_grads, tiny_llama
from transformers import TrainerCallback

import simpo.train.logps
from simpo.train.logps import fused_token_logps, plain_token_logps
from simpo.train.recipe import train_main


def split_k_forward(head, hidden, splits=4):
    """The head's logits as cuBLAS may compute them in bf16: the hidden dimension in `splits` chunks, each chunk's
    product and the running sum rounded to bf16 (torch's allow_bf16_reduced_precision_reduction, on by default)."""
    weight = head.weight.to(torch.bfloat16)
    total = None
    for h, w in zip(hidden.to(torch.bfloat16).chunk(splits, -1), weight.chunk(splits, -1)):
        partial = (h.float() @ w.float().T).to(torch.bfloat16)
        total = partial if total is None else (total.float() + partial.float()).to(torch.bfloat16)
    return total


def with_split_k_head(model):
    head = model.get_output_embeddings()
    head.forward = MethodType(split_k_forward, head)  # an instance-level forward, as accelerate's hooks set
    return model


def test_fused_path_under_accelerates_bf16_autocast_computes_in_bf16():
    """fp32 weights, bf16 autocast inside the forward, fp32 logits out: the head computed in bf16, so must the tiles
    (the check compared fp32 tiles with bf16 logits at an fp32 tolerance, the step-1 crash)."""
    batch = PLAIN(features())
    model = accelerate_bf16(tiny_llama())
    assert model(input_ids=batch["input_ids"]).logits.dtype == torch.float32  # what the check is handed
    assert_fused_equals_plain(model, batch, **BF16)
    # The log-probs are the plain path's own, not merely close: the tiles' GEMMs ran on the same bf16 operands and
    # rounded their products to bf16, as the autocast head did (fp32 tiles would be about 1e-2 away).
    fused, plain = (logps_loss_and_grads(fn, model, batch)[0] for fn in (fused_token_logps, plain_token_logps))
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16])
def test_head_with_another_gemm_blocking_under_autocast_and_checkpointing(weights):
    model = with_split_k_head(tiny_llama().to(weights))
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    assert_fused_equals_plain(accelerate_bf16(model), **BF16)


def test_an_instance_level_head_forward_survives_the_fused_call():
    model = with_split_k_head(tiny_llama())
    head = model.get_output_embeddings()
    forward = head.forward
    call(fused_token_logps, model, PLAIN(features()))
    assert head.forward is forward and not head._forward_hooks and not head._forward_pre_hooks


class SplitKHead(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        with_split_k_head(model)


def recipe_losses(tmp_path, monkeypatch, *overrides) -> tuple[list[float], int]:
    """The tiny recipe's first 6 logged losses, and how many times the tiles ran."""
    calls = []
    monkeypatch.setattr(simpo.train.logps, "tiled_logps", lambda *a, **k: calls.append(1) or tiled(*a, **k))
    out = tmp_path / "_".join(o.strip("-").replace("=", "") for o in overrides)
    train_main(
        [
            "training_configs/tiny-simpo-cpu.yaml",
            f"--output_dir={out}",
            "--report_to=none",
            "--max_steps=6",
            "--logging_steps=1",
            "--eval_strategy=no",
            "--do_eval=false",
            "--eval_on_start=false",
            "--activation_checkpointing=true",
            "--self_check=off",  # the tiles' calls counted are the training steps' (the check's own: below)
            *overrides,
        ],
        callbacks=[SplitKHead()],
    )
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h], len(calls)


tiled = simpo.train.logps.tiled_logps


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["float32", "bfloat16"])
def test_recipe_with_bf16_true_trains_on_the_fused_path(tmp_path, monkeypatch, weights):
    """The paper configs' precision on CPU: bf16: true (accelerate's autocast and fp32 outputs), fp32 or bf16
    weights, gradient checkpointing, a split-K head. Same losses as the plain path to bf16 tolerance."""
    precision = ["--bf16=true", f"--torch_dtype={weights}"]
    fused, tile_calls = recipe_losses(tmp_path, monkeypatch, *precision)
    plain, plain_tile_calls = recipe_losses(tmp_path, monkeypatch, *precision, "--fused_logps=false")
    assert tile_calls == 6 and plain_tile_calls == 0  # every step on the fused path, none fell back
    assert fused == pytest.approx(plain, abs=2e-2)


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["float32", "bfloat16"])
def test_the_self_check_keeps_the_fused_path_under_bf16_autocast_and_a_split_k_head(tmp_path, weights):
    """The start-up self-check in the paper configs' precision on CPU: the torch tiles and prefix sharing differ from
    the plain path's bf16 logits by rounding alone, well within bf16's tolerance, so both are kept."""
    from conftest import TINY_MODEL, tiny_rows

    from simpo.train.self_check import TOLERANCE
    from simpo.train.trainer import SimPOTrainer

    tokenizer, rows = tiny_rows(16)
    args = tiny_config(
        tmp_path,
        bf16=True,
        max_steps=1,
        per_device_train_batch_size=4,
        activation_checkpointing=True,
        model_init_kwargs={"dtype": weights},
    )
    trainer = SimPOTrainer(
        TINY_MODEL, args=args, train_dataset=rows, processing_class=tokenizer, callbacks=[SplitKHead()]
    )
    trainer.train()
    decision = trainer.self_check.decision
    assert decision.dtype == "bfloat16" and decision.path.name == "prefix sharing (dense masks), torch tiles"
    logp_tolerance, grad_tolerance = TOLERANCE["bfloat16"]
    for row in decision.rows:
        assert row.verdict == "agrees" and 0 < row.logp_error < logp_tolerance / 3, row
        assert row.grad_error < grad_tolerance / 3, row


def launch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_fused_path_under_fsdp2_in_two_processes(tmp_path):
    """FSDP2 shards the head's weight outside the root's forward; the fused path unshards it instead of falling back
    to full logits, and its gradient is reduce-scattered like any FSDP gradient (tests/helpers/fsdp2_probe.py)."""
    result = tmp_path / "fsdp2.json"
    run = launch(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "tests/helpers/fsdp2_probe.py",
        str(result),
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    cases = json.loads(result.read_text())
    assert set(cases) == {"untied-fp32", "untied-bf16", "tied-fp32", "tied-bf16"}
    for name, case in cases.items():
        fused, plain = case["fused"], case["plain"]
        assert fused["grad_fn"] == "TiledLogProbsBackward", name  # not the plain fallback
        assert fused["head_between_steps"] == "DTensor", name  # the weight really was a shard between steps
        if name.endswith("fp32"):  # exact: the averaged gradient is one process's gradient on the same pairs
            assert fused["losses"] == pytest.approx(case["reference_losses"], abs=1e-6), name
            assert fused["max_grad_error"] <= 1e-6 * fused["max_grad"], name
        else:  # bf16 parameters: as close to the fp32 reference as the plain path under the same policy
            assert fused["losses"] == pytest.approx(plain["losses"], abs=1e-3), name
            assert fused["max_grad_error"] <= 1.5 * plain["max_grad_error"] + 1e-4, name
