"""The SFT stage: TRL's SFTTrainer computes its loss on simpo's labels (checked against an independent NLL), packing
changes nothing but the layout, every simpo-sft key has its effect or is refused, and the tiny SFT run learns,
writes what a run writes, and feeds the tiny SimPO run."""

import json
import os
import re

import pytest
import torch
from conftest import REPO, TINY_MODEL
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTTrainer

from simpo.config.arguments import DataArguments, ModelArguments
from simpo.config.parser import parse_args
from simpo.config.run_record import run_settings
from simpo.errors import ConfigError, DataError
from simpo.evaluation.curves import plot_run
from simpo.models.loading import get_peft_config
from simpo.sft.config import REFUSED, SFTRunConfig
from simpo.sft.recipe import DESCRIPTION, SFT_ARGUMENTS, sft_main
from simpo.sft.reporting import SFT_PANELS
from simpo.sft.tokenization import tokenize_conversations
from simpo.train.recipe import train_main

TINY_CHAT = os.path.join(REPO, "data", "tiny-chat")
TINY_SFT = os.path.join(REPO, "training_configs", "tiny-sft-cpu.yaml")
QUIET = ["--report_to=none", "--save_strategy=no"]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    tokenizer.pad_token = tokenizer.eos_token
    rows = load_dataset("json", data_files=os.path.join(TINY_CHAT, "test.jsonl"), split="train").select(range(12))
    dataset, drops, _ = tokenize_conversations(rows.select_columns(["messages"]), tokenizer, 128, "eval")
    assert drops == [] and len(dataset) == 12
    return tokenizer, dataset


def reference_nll(model, dataset) -> float:
    """Mean over every labelled token of the data set of -log p(token | the tokens before it), one unpadded row at a
    time, in float64."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in dataset:
            logps = model(torch.tensor([row["input_ids"]])).logits[0].double().log_softmax(-1)
            for t, label in enumerate(row["labels"]):
                if t > 0 and label != -100:
                    total, count = total - logps[t - 1, label].item(), count + 1
    return total / count


@pytest.mark.parametrize("packing", [False, True])
def test_eval_loss_is_the_nll_of_assistant_tokens_packed_or_not(tmp_path, tiny, packing):
    tokenizer, dataset = tiny
    args = SFTRunConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_eval_batch_size=16,
        max_length=128,
        packing=packing,
    )
    trainer = SFTTrainer(TINY_MODEL, args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer)
    if packing:  # several conversations per row, each with its own positions (so its own attention)
        assert len(trainer.eval_dataset) < len(dataset)
        assert sum(len(r["seq_lengths"]) for r in trainer.eval_dataset) == len(dataset)
    expected = reference_nll(AutoModelForCausalLM.from_pretrained(TINY_MODEL).eval(), dataset)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(expected, rel=1e-5)


def parse_sft(*args):
    return parse_args([TINY_SFT, *args], SFT_ARGUMENTS)


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_sft_config_keys_simpo_does_not_use_are_refused(key):
    value = {
        "assistant_only_loss": "true",
        "completion_only_loss": "true",
        "dataset_kwargs": "{skip_prepare_dataset: true}",
        "truncation_mode": "keep_end",
        "packing_strategy": "wrapped",
        "model_init_kwargs": "{dtype: bfloat16}",
        "eos_token": "<|eot_id|>",
        "pad_token": "<|eot_id|>",
        "chat_template_path": "x.jinja",
        "dataset_text_field": "content",
    }[key]
    with pytest.raises(ValueError, match=rf"^{key}=.* is not supported by simpo-sft \(only "):
        parse_sft(f"--{key}={value}")


def test_padding_free_needs_packing_and_an_old_trl_key_names_the_new_one():
    with pytest.raises(ValueError, match="padding_free without packing"):
        parse_sft("--padding_free=true")
    assert parse_sft("--padding_free=true", "--packing=true")[2].padding_free
    with pytest.raises(ConfigError, match="Unknown config key 'beta'"):  # a SimPO key is no SFT key
        parse_sft("--beta=2")
    assert parse_sft("--max_seq_length=64")[2].max_length == 64  # TRL's old name, read as today's


def test_token_counting_defaults_to_real_tokens():
    assert parse_sft()[2].include_num_input_tokens_seen == "non_padding"
    assert parse_sft("--packing=true")[2].include_num_input_tokens_seen == "all"  # packed rows have no padding
    assert parse_sft("--include_num_input_tokens_seen=no")[2].include_num_input_tokens_seen == "no"


class Probe(TrainerCallback):
    """Records what the model and data look like when training starts."""

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        self.batch = next(iter(train_dataloader))


def test_disable_dropout_reaches_the_model_and_lora(tmp_path):
    model_args, _, args = parse_sft("--use_peft=true", "--lora_dropout=0.3", "--disable_dropout=true")
    assert get_peft_config(model_args, args).lora_dropout == 0.0
    assert get_peft_config(model_args, SFTRunConfig(output_dir=str(tmp_path))).lora_dropout == 0.3
    for disable in (True, False):
        probe = Probe()
        sft_main(
            [
                TINY_SFT,
                f"--output_dir={tmp_path / str(disable)}",
                "--use_peft=true",
                "--lora_dropout=0.3",
                f"--disable_dropout={disable}",
                "--max_steps=1",
                "--eval_strategy=no",
                "--do_eval=false",
                "--eval_on_start=false",
                *QUIET,
            ],
            callbacks=[probe],
        )
        # LoRA builds its dropout as an nn.Dropout(0.3), or as an identity when it is 0.
        assert set(probe.dropouts) <= {0.0} if disable else set(probe.dropouts) == {0.3}


def test_packing_key_packs_the_training_rows(tmp_path):
    probe = Probe()
    sft_main(
        [
            TINY_SFT,
            f"--output_dir={tmp_path}",
            "--packing=true",
            "--per_device_train_batch_size=2",
            "--max_steps=1",
            "--eval_strategy=no",
            "--do_eval=false",
            "--eval_on_start=false",
            *QUIET,
        ],
        callbacks=[probe],
    )
    batch = probe.batch  # padding-free: one row of the two packed rows' conversations, positions restarting at 0
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) > 2 and batch["input_ids"].shape[1] <= 2 * 128
    bos = AutoTokenizer.from_pretrained(TINY_MODEL).bos_token_id
    assert [batch["input_ids"][0, s].item() for s in starts] == [bos] * len(starts)
    assert (batch["labels"][0, starts] == -100).all()


def test_degenerate_rows_are_dropped_and_listed_or_stop_the_run(tmp_path):
    data = tmp_path / "chat"
    data.mkdir()
    rows = [json.loads(line) for line in open(os.path.join(TINY_CHAT, "train.jsonl"))][:40]
    rows[3]["messages"][-1]["content"] = ""
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [
        TINY_SFT,
        f"--dataset_mixer={{{data}: 1.0}}",
        "--dataset_splits=[train]",
        "--eval_strategy=no",
        "--do_eval=false",
        "--eval_on_start=false",
        "--max_steps=1",
        *QUIET,
    ]
    with pytest.raises(DataError, match=rf"^{data}/train.jsonl line 4: empty assistant reply .*on_degenerate_rows"):
        sft_main([*common, f"--output_dir={tmp_path / 'error'}", "--on_degenerate_rows=error"])
    sft_main([*common, f"--output_dir={tmp_path / 'drop'}"])
    listed = [json.loads(line) for line in (tmp_path / "drop" / "dropped_conversations.jsonl").read_text().splitlines()]
    assert listed == [
        {
            "source": str(data),
            "split": "train",
            "index": 3,
            "file": str(data / "train.jsonl"),
            "line": 4,
            "reason": "empty assistant reply",
        }
    ]
    assert json.loads((tmp_path / "drop" / "train_results.json").read_text())["train_samples"] == 39


@pytest.mark.slow
def test_tiny_sft_learns_then_tiny_simpo_starts_from_it(tmp_path, capsys):
    """The two-stage recipe on CPU: SFT on the shipped transcripts, then SimPO with the SFT folder as its model."""
    sft_out, simpo_out = tmp_path / "sft", tmp_path / "simpo"
    sft_main([TINY_SFT, f"--output_dir={sft_out}", "--report_to=none"])
    printed = capsys.readouterr().out

    history = json.loads((sft_out / "trainer_state.json").read_text())["log_history"]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert evals[0] > 5.5  # eval_on_start: the untrained model, about log(vocab) nats per assistant token
    assert evals[-1] < 0.6 * evals[0] and evals == sorted(evals, reverse=True)  # held-out loss goes down
    results = json.loads((sft_out / "train_results.json").read_text())
    assert results["train_samples"] == 433
    train_tokens = int(re.search(r"tokens +([\d,]+) train tokens", printed).group(1).replace(",", ""))
    assert results["train_num_tokens"] == train_tokens  # one epoch: every real token once, no padding counted
    assert "SFT run finished" in printed and "loss nll on assistant tokens only, packing off" in printed
    for name in ("model.safetensors", "eval_results.json", "README.md", "training_curves.png", "chat_template.jinja"):
        assert (sft_out / name).exists(), name
    panels = plot_run(str(sft_out), str(tmp_path / "curves.png"))
    assert list(panels) == list(SFT_PANELS)  # every panel had data
    assert [h for h, *_ in panels["loss (assistant tokens)"]] == ["loss", "eval_loss"]
    assert json.loads((sft_out / "config.json").read_text())["use_cache"] is True
    tokenizer = AutoTokenizer.from_pretrained(sft_out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(TINY_MODEL).chat_template
    # Its settings beside the model, as a SimPO run's: they parse back, and evaluation set-ups read them.
    model_args, data_args, args = parse_args([str(sft_out / "run_config.yaml")], SFT_ARGUMENTS)
    assert (args.output_dir, data_args.dataset_mixer) == (str(sft_out), {"data/tiny-chat": 1.0})
    assert run_settings(str(sft_out))[1] == data_args

    train_main(
        [
            "training_configs/tiny-simpo-cpu.yaml",
            f"--model_name_or_path={sft_out}",
            f"--output_dir={simpo_out}",
            "--report_to=none",
            "--max_steps=4",
            "--eval_steps=4",
        ]
    )
    assert f"model           {sft_out} (llama)" in capsys.readouterr().out
    simpo_evals = [
        h for h in json.loads((simpo_out / "trainer_state.json").read_text())["log_history"] if "eval_sft_loss" in h
    ]
    # Its held-out NLL of the chosen replies starts where SFT left it, far below the untrained model's.
    assert simpo_evals[0]["eval_sft_loss"] == pytest.approx(evals[-1], rel=0.1)
    assert (simpo_out / "model.safetensors").exists()


def test_model_keys_reach_from_pretrained_as_in_the_simpo_recipe(tmp_path):
    from simpo.sft.recipe import sft_model_init_kwargs

    model_args, _, args = parse_sft("--torch_dtype=bfloat16", "--attn_implementation=eager")
    assert sft_model_init_kwargs(model_args, args) == {
        "dtype": "bfloat16",
        "device_map": None,
        "revision": "main",
        "trust_remote_code": False,
        "attn_implementation": "eager",
        "use_cache": True,
    }
    assert sft_model_init_kwargs(ModelArguments(), args)["dtype"] == "auto"  # from_pretrained's own default
    assert isinstance(parse_sft()[1], DataArguments)


def test_evaluation_without_a_test_split_stops_before_the_model_loads(tmp_path):
    with pytest.raises(DataError, match=r"dataset_splits has no test split: add one \(e.g. test_sft\)"):
        sft_main([TINY_SFT, f"--output_dir={tmp_path}", "--dataset_splits=[train]", *QUIET])


def test_simpo_sft_help_names_itself_and_its_keys(capsys):
    with pytest.raises(SystemExit) as done:
        sft_main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(DESCRIPTION + "\n\nusage: simpo-sft CONFIG.yaml")
    assert "SFTRunConfig:" in text and "--on_degenerate_rows" in text


def test_do_train_false_evaluates_the_model_as_loaded(tmp_path):
    assert sft_main([TINY_SFT, f"--output_dir={tmp_path}", "--do_train=false", *QUIET]) == 0
    metrics = json.loads((tmp_path / "eval_results.json").read_text())
    assert metrics["eval_samples"] == 73 and metrics["eval_loss"] > 5.5  # the untrained model's held-out NLL
    assert not (tmp_path / "model.safetensors").exists()


def test_conversations_all_cut_to_nothing_stop_the_run_naming_why(tmp_path):
    with pytest.raises(
        DataError,
        match=r"All 433 rows of train were dropped \(433 assistant turns truncated away"
        r" \(max_length\)\), .* raise max_length",
    ):
        sft_main([TINY_SFT, f"--output_dir={tmp_path}", "--max_length=2", *QUIET])
