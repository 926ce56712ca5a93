"""The trainer against an independent computation, and the whole recipe end to end on the shipped tiny model."""

import json

import pytest
import torch
from conftest import TINY_DATA, TINY_MODEL, log_sigmoid, reference_avg_logp, tiny_config, tiny_rows
from transformers import AutoModelForCausalLM, AutoTokenizer

from simpo.train.config import SimPOConfig
from simpo.train.recipe import train_main
from simpo.train.trainer import SimPOTrainer


@pytest.fixture(scope="module")
def tiny():
    return tiny_rows(8)


@pytest.mark.parametrize(
    "loss_type,sft_weight,smoothing", [("sigmoid", 0.0, 0.0), ("sigmoid", 0.5, 0.1), ("hinge", 0.0, 0.0)]
)
def test_logged_step_equals_paper_formulas_on_the_models_own_logps(tmp_path, tiny, loss_type, sft_weight, smoothing):
    tokenizer, rows = tiny
    beta, ratio = 2.5, 0.4
    args = SimPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        max_steps=1,
        logging_steps=1,
        learning_rate=0.0,
        per_device_train_batch_size=8,
        beta=beta,
        gamma_beta_ratio=ratio,
        loss_type=loss_type,
        sft_weight=sft_weight,
        label_smoothing=smoothing,
        max_length=128,
        max_prompt_length=64,
        save_strategy="no",
    )
    trainer = SimPOTrainer(TINY_MODEL, args=args, train_dataset=rows, processing_class=tokenizer)
    trainer.train()
    logged = trainer.state.log_history[0]

    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL).eval()
    chosen, rejected, nll_sum, nll_count = [], [], 0.0, 0
    for row in trainer.train_dataset:
        chosen.append(reference_avg_logp(model, row["chosen_input_ids"], row["chosen_labels"]))
        rejected.append(reference_avg_logp(model, row["rejected_input_ids"], row["rejected_labels"]))
        n = sum(1 for t in row["chosen_labels"][1:] if t != -100)
        nll_sum, nll_count = nll_sum - chosen[-1] * n, nll_count + n
    gamma = beta * ratio
    z = [beta * a - beta * b - gamma for a, b in zip(chosen, rejected)]
    if loss_type == "sigmoid":
        losses = [-(1 - smoothing) * log_sigmoid(x) - smoothing * log_sigmoid(-x) for x in z]
    else:
        losses = [max(0.0, 1 - x) for x in z]
    sft = nll_sum / nll_count
    mean = lambda xs: sum(xs) / len(xs)
    assert logged["loss"] == pytest.approx(mean(losses) + sft_weight * sft, rel=1e-4)
    assert logged["rewards/chosen"] == pytest.approx(beta * mean(chosen), rel=1e-4)
    assert logged["rewards/rejected"] == pytest.approx(beta * mean(rejected), rel=1e-4)
    assert logged["rewards/margins"] == pytest.approx(beta * (mean(chosen) - mean(rejected)), rel=1e-4)
    assert logged["rewards/accuracies"] == pytest.approx(mean([float(a > b) for a, b in zip(chosen, rejected)]))
    assert logged["logps/chosen"] == pytest.approx(mean(chosen), rel=1e-4)
    assert logged["sft_loss"] == pytest.approx(sft, rel=1e-4)
    assert {"logits/chosen", "logits/rejected"} <= set(logged)


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny):
    tokenizer, rows = tiny

    def one_step(batch_size, accumulation):
        args = SimPOConfig(
            output_dir=str(tmp_path / f"ga{accumulation}"),
            use_cpu=True,
            report_to="none",
            max_steps=1,
            learning_rate=1e-2,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_length=128,
            max_prompt_length=64,
            save_strategy="no",
            seed=0,
            optim="sgd",
            max_grad_norm=0.0,
        )
        trainer = SimPOTrainer(TINY_MODEL, args=args, train_dataset=rows, processing_class=tokenizer)
        trainer.get_train_dataloader = lambda: torch.utils.data.DataLoader(  # fixed order for both runs
            trainer.train_dataset, batch_size=batch_size, collate_fn=trainer.data_collator
        )
        trainer.train()
        return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}

    big, accumulated = one_step(8, 1), one_step(4, 2)
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], atol=1e-6, rtol=1e-5)


def test_tiny_run_end_to_end(tmp_path):
    """The README's main command, into tmp: it learns a held-out preference and writes everything a run should."""
    out = tmp_path / "run"
    train_main(["training_configs/tiny-simpo-cpu.yaml", f"--output_dir={out}", "--report_to=none"])

    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    evals = [h for h in history if "eval_rewards/accuracies" in h]
    assert 0.2 <= evals[0]["eval_rewards/accuracies"] <= 0.8  # eval_on_start: untrained, about chance
    assert json.loads((out / "eval_results.json").read_text())["eval_rewards/accuracies"] >= 0.9
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < 0.5 * losses[0]
    expected_metrics = {
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
        "sft_loss",
    }
    assert expected_metrics <= set(next(h for h in history if "loss" in h))
    assert {"eval_" + m for m in expected_metrics} <= set(evals[-1])
    assert json.loads((out / "train_results.json").read_text())["train_samples"] == 600
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    assert "simpo" in (out / "README.md").read_text()

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and reloaded.config.use_cache
    original = AutoModelForCausalLM.from_pretrained(TINY_MODEL)
    ids = torch.tensor([tokenizer("hello there", add_special_tokens=True)["input_ids"]])
    assert not torch.allclose(reloaded(ids).logits, original(ids).logits)  # the trained weights were saved


def test_lora_with_activation_checkpointing_trains_only_adapters_with_dropout_off(tmp_path, tiny):
    from peft import LoraConfig

    from simpo.config.arguments import ModelArguments
    from simpo.models.loading import get_peft_config

    tokenizer, rows = tiny
    args = tiny_config(
        tmp_path,
        max_steps=2,
        learning_rate=1e-2,
        per_device_train_batch_size=4,
        activation_checkpointing=True,
        activation_checkpointing_kwargs={"use_reentrant": False},
    )
    peft_config = get_peft_config(ModelArguments(use_peft=True, lora_r=4, lora_dropout=0.3), args)
    assert isinstance(peft_config, LoraConfig) and peft_config.lora_dropout == 0.0  # disable_dropout wins
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL, attention_dropout=0.2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = SimPOTrainer(model, args=args, train_dataset=rows, processing_class=tokenizer, peft_config=peft_config)
    assert all(m.p == 0.0 for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout))
    assert trainer.model.base_model.model.config.attention_dropout == 0.2  # the module-level dropouts are off
    trainer.train()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
    changed = {
        n
        for n, p in trainer.model.named_parameters()
        if "lora_" in n and not torch.equal(p, torch.zeros_like(p)) and "lora_B" in n
    }
    assert changed  # lora_B starts at zero and moved
    for name, weight in trainer.model.get_base_model().state_dict().items():
        if "lora_" not in name and name.replace(".base_layer", "") in before:
            torch.testing.assert_close(weight, before[name.replace(".base_layer", "")], rtol=0, atol=0)
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_tiny_run_learns_identically_with_each_fast_path_on_or_off(tmp_path):
    """fused_logps and prefix_sharing change how a step is computed, never what: the same logged losses."""

    def losses(*overrides):
        out = tmp_path / "_".join(o.strip("-").replace("=", "") for o in overrides)
        train_main(
            [
                "training_configs/tiny-simpo-cpu.yaml",
                f"--output_dir={out}",
                "--report_to=none",
                "--max_steps=12",
                "--logging_steps=1",
                "--eval_strategy=no",
                "--do_eval=false",
                "--eval_on_start=false",
                *overrides,
            ]
        )
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        return [h["loss"] for h in history if "loss" in h]

    reference = losses("--fused_logps=false", "--prefix_sharing=false")
    assert len(reference) == 12 and reference[-1] < reference[0]
    for overrides in (
        ["--fused_logps=true", "--prefix_sharing=false"],
        ["--fused_logps=false", "--prefix_sharing=true"],
        ["--fused_logps=true", "--prefix_sharing=true", "--padding_free=true"],
    ):
        assert losses(*overrides) == pytest.approx(reference, abs=1e-5), overrides


@pytest.mark.slow
def test_torch_compile_trains_the_same_with_the_fused_path_and_prefix_sharing(tmp_path):
    """torch_compile wraps the model the fused path hooks into and the prefix-shared masks feed (aot_eager: dynamo's
    graph capture without inductor's C++ build, which takes minutes on 2 cores; the GPU benchmark times inductor)."""

    def losses(*overrides):
        out = tmp_path / "_".join(o.strip("-").replace("=", "") for o in overrides)
        train_main(
            [
                "training_configs/tiny-simpo-cpu.yaml",
                f"--output_dir={out}",
                "--report_to=none",
                "--max_steps=4",
                "--logging_steps=1",
                "--eval_strategy=no",
                "--do_eval=false",
                "--eval_on_start=false",
                "--save_strategy=no",
                *overrides,
            ]
        )
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        return [h["loss"] for h in history if "loss" in h]

    compiled = losses("--torch_compile=true", "--torch_compile_backend=aot_eager")
    assert compiled == pytest.approx(losses(), abs=1e-5) and len(compiled) == 4


def test_eval_metrics_average_over_pairs_not_batches(tmp_path, tiny):
    tokenizer, rows = tiny
    args = SimPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_eval_batch_size=3,
        max_length=128,
        max_prompt_length=64,
        beta=2.0,
    )
    trainer = SimPOTrainer(TINY_MODEL, args=args, eval_dataset=rows.select(range(7)), processing_class=tokenizer)
    metrics = trainer.evaluate()  # batches of 3, 3 and 1 pairs
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL).eval()
    margins = [
        2.0
        * (
            reference_avg_logp(model, r["chosen_input_ids"], r["chosen_labels"])
            - reference_avg_logp(model, r["rejected_input_ids"], r["rejected_labels"])
        )
        for r in trainer.eval_dataset
    ]
    assert metrics["eval_rewards/margins"] == pytest.approx(sum(margins) / 7, rel=1e-4)
    assert metrics["eval_rewards/accuracies"] == pytest.approx(sum(m > 0 for m in margins) / 7)


def test_evaluation_logs_are_known_by_the_trainer_not_guessed_from_keys(tmp_path, tiny):
    tokenizer, rows = tiny
    args = SimPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_eval_batch_size=4,
        max_length=128,
        max_prompt_length=64,
    )
    trainer = SimPOTrainer(TINY_MODEL, args=args, train_dataset=rows, eval_dataset=rows, processing_class=tokenizer)
    # A prefix that starts like the training summary's keys: still evaluation metrics.
    metrics = trainer.evaluate(metric_key_prefix="train_subset")
    assert 0 <= metrics["train_subset_rewards/accuracies"] <= 1 and "train_subset_loss" in metrics
    trainer.log({"probe_loss": 1.0})  # another callback's log: left as it is
    assert set(trainer.state.log_history[-1]) == {"probe_loss", "epoch", "step"}


def test_generate_during_eval_writes_samples_beside_the_pairs(tmp_path):
    out = tmp_path / "gen"
    train_main(
        [
            "training_configs/tiny-simpo-cpu.yaml",
            f"--output_dir={out}",
            "--report_to=none",
            "--max_steps=10",
            "--eval_steps=5",
            "--generate_during_eval=true",
        ]
    )
    samples = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    # eval_on_start, steps 5 and 10, and the final evaluation: 4 prompts each
    assert [s["step"] for s in samples] == [0] * 4 + [5] * 4 + [10] * 4 + [10] * 4
    test_rows = [json.loads(line) for line in open(f"{TINY_DATA}/test.jsonl")]
    prompts = {r["chosen"][0]["content"] for r in test_rows}
    for sample in samples:
        assert any(p in sample["prompt"] for p in prompts) and sample["chosen"] != sample["rejected"]
    assert samples[0]["prompt"] == samples[4]["prompt"]  # the same prompts every time
    # The final evaluation's replies are the saved model's own greedy continuations.
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    for sample in samples[-4:]:
        ids = torch.tensor([tokenizer(sample["prompt"], add_special_tokens=False)["input_ids"]])
        expected = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=64,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        assert sample["generated"] == tokenizer.decode(expected[0, ids.shape[1] :]) != ""
