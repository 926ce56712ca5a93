"""The shipped training configs: every YAML parses cleanly, and the paper runs carry the published values."""

import glob
import logging
import os
import warnings

import pytest
import transformers.training_args
from conftest import REPO

from simpo.chat_templates import apply_chat_template
from simpo.parser import parse_args

CONFIG_DIR = os.path.join(REPO, "training_configs")
ALL_CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))

# file: (model, dataset, splits, beta, gamma_beta_ratio, learning rate, max_length, max_prompt_length, attention)
PAPER_RUNS = {
    "mistral-7b-base-simpo.yaml": (
        "alignment-handbook/zephyr-7b-sft-full", "HuggingFaceH4/ultrafeedback_binarized", ["train_prefs", "test_prefs"],
        2.0, 0.8, 3e-7, 1024, 512, "flash_attention_2",
    ),
    "mistral-7b-instruct-simpo.yaml": (
        "mistralai/Mistral-7B-Instruct-v0.2", "princeton-nlp/mistral-instruct-ultrafeedback", ["train", "test"],
        2.5, 0.1, 5e-7, 2048, 1800, "flash_attention_2",
    ),
    "llama-3-8b-base-simpo.yaml": (
        "princeton-nlp/Llama-3-Base-8B-SFT", "HuggingFaceH4/ultrafeedback_binarized", ["train_prefs", "test_prefs"],
        2.0, 0.5, 6e-7, 2048, 1800, "flash_attention_2",
    ),
    "llama-3-8b-instruct-simpo.yaml": (
        "meta-llama/Meta-Llama-3-8B-Instruct", "princeton-nlp/llama3-ultrafeedback", ["train", "test"],
        2.5, 0.55, 1e-6, 2048, 1800, "flash_attention_2",
    ),
    "llama-3-8b-instruct-simpo-v2.yaml": (
        "meta-llama/Meta-Llama-3-8B-Instruct", "princeton-nlp/llama3-ultrafeedback-armorm", ["train", "test"],
        10.0, 0.3, 1e-6, 2048, 1800, "flash_attention_2",
    ),
    "gemma-2-9b-it-simpo.yaml": (
        "google/gemma-2-9b-it", "princeton-nlp/gemma2-ultrafeedback-armorm", ["train", "test"],
        10.0, 0.5, 8e-7, 2048, 1800, "eager",
    ),
}


@pytest.fixture
def parse(monkeypatch, tmp_path):
    """parse_args on a config, as on the GPU machine the paper configs are for: TrainingArguments refuses bf16 when
    it finds no bf16-capable GPU, so say there is one (nothing else in parsing touches the device)."""
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda *a, **k: True)

    def run(path):
        return parse_args([path, f"--output_dir={tmp_path / 'out'}"])

    return run


def test_every_paper_run_has_a_config():
    assert set(PAPER_RUNS) <= {os.path.basename(p) for p in ALL_CONFIGS}


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=os.path.basename)
def test_config_parses_without_warnings(path, parse, caplog):
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parse(path)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []  # e.g. no deprecated key


@pytest.mark.parametrize("name", sorted(PAPER_RUNS))
def test_paper_run_values(name, parse):
    model, dataset, splits, beta, ratio, lr, max_length, max_prompt_length, attn = PAPER_RUNS[name]
    model_args, data_args, args = parse(os.path.join(CONFIG_DIR, name))

    assert model_args.model_name_or_path == model
    assert model_args.attn_implementation == attn
    assert model_args.torch_dtype == "bfloat16"
    assert data_args.dataset_mixer == {dataset: 1.0}
    assert data_args.dataset_splits == splits
    assert (args.beta, args.gamma_beta_ratio, args.learning_rate) == (beta, ratio, lr)
    assert (args.max_length, args.max_prompt_length) == (max_length, max_prompt_length)

    # Shared recipe: 1 epoch, global batch 2 x 16 x 4 GPUs = 128, cosine with 10% warm-up, AdamW, bf16.
    assert args.num_train_epochs == 1 and args.seed == 42
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 16)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 4 == 128
    assert args.warmup_steps == 0.1 and args.lr_scheduler_type == "cosine" and args.optim == "adamw_torch"
    assert args.bf16 and not args.fp16
    assert args.gradient_checkpointing and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert (args.eval_strategy, args.eval_steps, args.logging_steps) == ("steps", 400, 5)
    assert args.do_eval and args.save_strategy == "steps"
    assert args.report_to in ([], ["none"], "none")
    assert name.startswith("gemma") == (data_args.chat_template is not None)


def test_paper_configs_name_their_own_output_dir():
    import yaml

    for name in PAPER_RUNS:
        with open(os.path.join(CONFIG_DIR, name)) as f:
            assert yaml.safe_load(f)["output_dir"] == "outputs/" + name.removesuffix(".yaml")


def test_gemma_template_folds_system_into_first_user_turn(parse, make_tokenizer):
    _, data_args, _ = parse(os.path.join(CONFIG_DIR, "gemma-2-9b-it-simpo.yaml"))
    tokenizer = make_tokenizer(["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], bos="<bos>", eos="<eos>")
    tokenizer.chat_template = data_args.chat_template
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi "},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    assert tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    # Through simpo's pipeline: the empty system turn it inserts folds into nothing; responses lose the BOS.
    row = {
        "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away"}],
    }
    assert apply_chat_template(row, tokenizer) == {
        "prompt": "<bos><start_of_turn>user\nHi<end_of_turn>\n",
        "chosen": "<start_of_turn>model\nHello<end_of_turn>\n",
        "rejected": "<start_of_turn>model\nGo away<end_of_turn>\n",
    }
