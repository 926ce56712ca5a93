"""activation_checkpointing: auto decides from a memory estimate against the device's free memory (mocked here)."""

from types import SimpleNamespace

import pytest
from conftest import TINY_MODEL, tiny_rows
from transformers import AutoModelForCausalLM

from simpo.train import memory_plan
from simpo.train.config import SimPOConfig
from simpo.train.memory_plan import choose_checkpointing, sharding, training_bytes
from simpo.train.reporting import simpo_start_summary
from simpo.train.trainer import SimPOTrainer

GIB = 2**30


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(TINY_MODEL)


def config(tmp_path, **keys) -> SimPOConfig:
    return SimPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=4,
        max_length=128,
        max_prompt_length=64,
        **keys,
    )


def independent_estimate(model, fused: bool) -> int:
    """fp32 weights, fp32 gradients, two fp32 Adam moments; 4 pairs x 2 sequences x 128 tokens of activations."""
    n = sum(p.numel() for p in model.parameters())  # tied head counted once
    c = model.config
    per_token = c.num_hidden_layers * (12 * c.hidden_size + 5 * c.intermediate_size) * 4
    head = 0 if fused else 3 * c.vocab_size * 4
    return 4 * n + 4 * n + 8 * n + 4 * 2 * 128 * (per_token + head)


def test_auto_is_the_default_and_off_without_cuda(tmp_path, model, monkeypatch):
    monkeypatch.setattr(memory_plan.torch.cuda, "is_available", lambda: False)
    args = config(tmp_path)
    assert args.activation_checkpointing == "auto"
    choice = choose_checkpointing(model, args)
    assert not choice.enabled and "no CUDA device" in choice.reason


@pytest.mark.parametrize("fused", [True, False])
def test_estimate_adds_weights_gradients_adam_and_activations(tmp_path, model, fused):
    parts = training_bytes(model, config(tmp_path, fused_logps=fused))
    assert parts["tokens"] == 4 * 2 * 128
    assert sum(v for k, v in parts.items() if k != "tokens") == independent_estimate(model, fused)


def test_auto_turns_checkpointing_off_when_it_fits_and_on_when_not(tmp_path, model):
    args = config(tmp_path)
    need = independent_estimate(model, fused=True)
    roomy = choose_checkpointing(model, args, budget=(int(need / 0.8) + 1, 140 * GIB))
    assert not roomy.enabled and "auto: needs about" in roomy.reason
    tight = choose_checkpointing(model, args, budget=(int(need / 0.8) - 1, 140 * GIB))
    assert tight.enabled and "(80% of" in tight.reason and "1,024 tokens" in tight.reason


@pytest.mark.parametrize("setting", [True, False])
def test_an_explicit_setting_wins_over_the_estimate(tmp_path, model, setting):
    choice = choose_checkpointing(model, config(tmp_path, activation_checkpointing=setting), budget=(0, 0))
    assert choice.enabled is setting and choice.reason == f"set: activation_checkpointing: {str(setting).lower()}"


def test_the_deprecated_alias_still_sets_it(tmp_path):
    with pytest.warns(FutureWarning):
        assert config(tmp_path, gradient_checkpointing=True).activation_checkpointing is True


def test_sharding_divides_by_the_processes_that_share_each_part(monkeypatch):
    args = SimpleNamespace(world_size=8, fsdp=None, hf_deepspeed_config=None)
    assert sharding(args) == (1, 1, 1)
    for stage, expected in (("1", (1, 1, 8)), ("2", (1, 8, 8)), ("3", (8, 8, 8))):
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", stage)
        assert sharding(args) == expected
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert sharding(args) == (8, 8, 8)


@pytest.mark.parametrize("room,enabled", [(1000 * GIB, False), (1024, True)])
def test_the_trainer_applies_the_choice_and_the_start_summary_says_why(tmp_path, monkeypatch, room, enabled):
    monkeypatch.setattr(memory_plan, "device_budget", lambda model: (room, 140 * GIB))
    tokenizer, rows = tiny_rows(4)
    args = config(tmp_path, max_steps=1)
    trainer = SimPOTrainer(TINY_MODEL, args=args, train_dataset=rows, processing_class=tokenizer)
    assert trainer.args.activation_checkpointing is enabled and trainer.args.gradient_checkpointing is enabled
    line = next(x for x in simpo_start_summary(trainer).splitlines() if x.strip().startswith("checkpointing"))
    assert line.split()[1] == ("on" if enabled else "off") and "GiB free" in line
    assert "  liger kernels   off (auto: no CUDA device" in simpo_start_summary(trainer)  # simpo/train/liger.py
    trainer.train()  # the Trainer read the resolved value
    assert trainer.model.is_activation_checkpointing is enabled


@pytest.mark.parametrize("world,batch,expected", [(4, 2, True), (8, 2, True), (1, 8, None)])
def test_the_paper_setups_keep_checkpointing_and_a_1b_model_drops_it(world, batch, expected):
    """Llama-3-8B under ZeRO-3 at the paper configs' batch (2 x 2048 tokens) on 80 GB GPUs: on, as the paper
    trained. Llama-3.2-1B alone on a 140 GB H200 at batch 8 x 1024 tokens: off."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if expected is None:  # the 1B shape
        shape = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32)
        max_length, free, expected = 1024, 139 * GIB, False
    else:
        shape = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32)
        max_length, free = 2048, 79 * GIB
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=128256, num_key_value_heads=8, **shape)).to(torch.bfloat16)
    args = SimpleNamespace(
        activation_checkpointing="auto",
        world_size=world,
        fsdp=None,
        hf_deepspeed_config=None,
        deepspeed="zero3" if world > 1 else None,
        bf16=True,
        fp16=False,
        fused_logps=True,
        per_device_train_batch_size=batch,
        max_length=max_length,
    )
    env = {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"} if world > 1 else {}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        choice = choose_checkpointing(model, args, budget=(free, free))
    assert choice.enabled is expected, choice.reason
