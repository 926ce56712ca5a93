"""The shipped training configs: every YAML parses cleanly, and the paper runs carry the published values."""

import glob
import logging
import os
import warnings

import pytest
import transformers.training_args
from conftest import REPO

from simpo.config.arguments import DataArguments, ModelArguments
from simpo.config.parser import parse_args
from simpo.data.chat_templates import MISTRAL_CHAT_TEMPLATE, apply_chat_template, set_chat_template
from simpo.sft.recipe import SFT_ARGUMENTS
from simpo.train.config import SimPOConfig

CONFIG_DIR = os.path.join(REPO, "training_configs")
ALL_CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))

# file: (model, dataset, splits, beta, gamma_beta_ratio, learning rate, max_length, max_prompt_length, attention)
PAPER_RUNS = {
    "mistral-7b-base-simpo.yaml": (
        "alignment-handbook/zephyr-7b-sft-full",
        "HuggingFaceH4/ultrafeedback_binarized",
        ["train_prefs", "test_prefs"],
        2.0,
        0.8,
        3e-7,
        1024,
        512,
        "flash_attention_2",
    ),
    "mistral-7b-instruct-simpo.yaml": (
        "mistralai/Mistral-7B-Instruct-v0.2",
        "princeton-nlp/mistral-instruct-ultrafeedback",
        ["train", "test"],
        2.5,
        0.1,
        5e-7,
        2048,
        1800,
        "flash_attention_2",
    ),
    "llama-3-8b-base-simpo.yaml": (
        "princeton-nlp/Llama-3-Base-8B-SFT",
        "HuggingFaceH4/ultrafeedback_binarized",
        ["train_prefs", "test_prefs"],
        2.0,
        0.5,
        6e-7,
        2048,
        1800,
        "flash_attention_2",
    ),
    "llama-3-8b-instruct-simpo.yaml": (
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "princeton-nlp/llama3-ultrafeedback",
        ["train", "test"],
        2.5,
        0.55,
        1e-6,
        2048,
        1800,
        "flash_attention_2",
    ),
    "llama-3-8b-instruct-simpo-v2.yaml": (
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "princeton-nlp/llama3-ultrafeedback-armorm",
        ["train", "test"],
        10.0,
        0.3,
        1e-6,
        2048,
        1800,
        "flash_attention_2",
    ),
    "gemma-2-9b-it-simpo.yaml": (
        "google/gemma-2-9b-it",
        "princeton-nlp/gemma2-ultrafeedback-armorm",
        ["train", "test"],
        10.0,
        0.5,
        8e-7,
        2048,
        1800,
        "eager",
    ),
}


# The SFT stage of the two base-model runs: file: (model, the SimPO config that starts from its output)
SFT_RUNS = {
    "llama-3-8b-base-sft.yaml": ("meta-llama/Meta-Llama-3-8B", "llama-3-8b-base-simpo.yaml"),
    "mistral-7b-base-sft.yaml": ("mistralai/Mistral-7B-v0.1", "mistral-7b-base-simpo.yaml"),
}
# The Llama-3 template of the reference's llama-3-8b-base-sft.yaml.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' +"
    " message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0"
    " %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{"
    " '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def is_sft(path: str) -> bool:
    return os.path.basename(path).removesuffix(".yaml").endswith(("-sft", "-sft-cpu"))


@pytest.fixture
def parse(monkeypatch, tmp_path):
    """parse_args on a config (the SFT recipe's argument groups for SFT configs), as on the GPU machine the paper
    configs are for: TrainingArguments refuses bf16 when it finds no bf16-capable GPU, so say there is one (nothing
    else in parsing touches the device)."""
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda *a, **k: True)

    def run(path, *overrides):
        types = SFT_ARGUMENTS if is_sft(path) else (ModelArguments, DataArguments, SimPOConfig)
        return parse_args([path, f"--output_dir={tmp_path / 'out'}", *overrides], types)

    return run


def test_every_paper_run_has_a_config():
    assert set(PAPER_RUNS) | set(SFT_RUNS) <= {os.path.basename(p) for p in ALL_CONFIGS}


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
    # auto: the memory estimate decides, and for these runs it says on (tests/train/test_memory_plan.py)
    assert args.activation_checkpointing == "auto" and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert (args.eval_strategy, args.eval_steps, args.logging_steps) == ("steps", 400, 5)
    assert args.do_eval and args.save_strategy == "steps"
    assert args.report_to in ([], ["none"], "none")
    assert name.startswith("gemma") == (data_args.chat_template is not None)


def test_paper_configs_name_their_own_output_dir():
    import yaml

    for name in PAPER_RUNS:
        with open(os.path.join(CONFIG_DIR, name)) as f:
            assert yaml.safe_load(f)["output_dir"] == "outputs/" + name.removesuffix(".yaml")


@pytest.fixture
def gemma_tokenizer(parse, make_tokenizer):
    """A tokenizer with Gemma's special tokens and the Gemma-2 config's chat template."""
    _, data_args, _ = parse(os.path.join(CONFIG_DIR, "gemma-2-9b-it-simpo.yaml"))
    tokenizer = make_tokenizer(["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], bos="<bos>", eos="<eos>")
    tokenizer.chat_template = data_args.chat_template
    return tokenizer


def test_gemma_template_folds_system_into_first_user_turn(gemma_tokenizer):
    tokenizer = gemma_tokenizer
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


def test_gemma_template_trims_each_turn_after_folding_the_system_text_as_the_reference(gemma_tokenizer):
    """The reference trims (system + "\n\n" + first user turn) as one string: the user text's leading whitespace
    survives behind a system message; every other turn is trimmed whole."""
    tokenizer = gemma_tokenizer
    with_system = [{"role": "system", "content": " sys "}, {"role": "user", "content": " Hi\n"}]
    assert tokenizer.apply_chat_template(with_system, tokenize=False) == (
        "<bos><start_of_turn>user\nsys\n\n Hi<end_of_turn>\n"
    )
    row = {
        "chosen": [{"role": "user", "content": " Hi\n"}, {"role": "assistant", "content": "\n Hello \n"}],
        "rejected": [{"role": "user", "content": " Hi\n"}, {"role": "assistant", "content": " Go away"}],
    }
    assert apply_chat_template(row, tokenizer) == {
        "prompt": "<bos><start_of_turn>user\nHi<end_of_turn>\n",
        "chosen": "<start_of_turn>model\nHello<end_of_turn>\n",
        "rejected": "<start_of_turn>model\nGo away<end_of_turn>\n",
    }


@pytest.mark.parametrize("name", sorted(SFT_RUNS))
def test_sft_run_values(name, parse):
    """The reference's SFT values (its llama-3-8b-base-sft.yaml): lr 2e-5, 1 epoch, cosine with 10% warm-up, max
    length 2048, packed rows, 8 per device x 4 accumulation (x 4 GPUs = 128), UltraChat-200k's SFT splits, bf16."""
    model_args, data_args, args = parse(os.path.join(CONFIG_DIR, name))
    assert model_args.model_name_or_path == SFT_RUNS[name][0]
    assert model_args.torch_dtype == "bfloat16" and model_args.attn_implementation == "flash_attention_2"
    assert data_args.dataset_mixer == {"HuggingFaceH4/ultrachat_200k": 1.0}
    assert data_args.dataset_splits == ["train_sft", "test_sft"]
    assert args.learning_rate == 2e-5 and args.num_train_epochs == 1 and args.seed == 42
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == 0.1 and args.optim == "adamw_torch"
    # Packed as alignment-handbook's run_sft.py packed (packing=True, 2048-token rows): the batch of 128 counts rows;
    # a conversation longer than a row carries on into another (bfd_split), the test split is packed the same way.
    assert args.max_length == 2048 and args.packing and args.packing_strategy == "bfd_split"
    assert args.eval_packing is None and args.include_num_input_tokens_seen == "all"
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 4)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 4 == 128
    assert args.bf16 and not args.fp16
    assert args.gradient_checkpointing and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert (args.eval_strategy, args.eval_steps, args.logging_steps) == ("steps", 200, 5) and args.do_eval
    assert args.output_dir.endswith("out")  # the fixture's; the file names its own:
    import yaml

    with open(os.path.join(CONFIG_DIR, name)) as f:
        assert yaml.safe_load(f)["output_dir"] == "outputs/" + name.removesuffix(".yaml")
    # The Llama-3 template for Llama (the reference's, verbatim); Mistral gets simpo's Mistral template.
    assert data_args.chat_template == (LLAMA3_TEMPLATE if name.startswith("llama") else None)


@pytest.mark.parametrize("name", sorted(SFT_RUNS))
def test_the_base_simpo_config_takes_the_sft_output_folder_and_renders_as_sft_did(
    name, parse, make_tokenizer, monkeypatch, tmp_path
):
    """The two-stage recipe: the SimPO config with model_name_or_path = the SFT config's output_dir, no other edit,
    renders conversations with the template SFT trained on (saved with the tokenizer in the SFT output)."""
    import yaml

    from simpo.models.loading import get_tokenizer

    model_args, data_args, _ = parse(os.path.join(CONFIG_DIR, name))
    with open(os.path.join(CONFIG_DIR, name)) as f:
        sft_output = yaml.safe_load(f)["output_dir"]
    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|eot_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<s>",
        "</s>",
        "[INST]",
        "[/INST]",
    ]
    llama = name.startswith("llama")
    tokenizer = make_tokenizer(
        specials, bos="<|begin_of_text|>" if llama else "<s>", eos="<|end_of_text|>" if llama else "</s>"
    )  # base models ship no template
    set_chat_template(tokenizer, data_args.chat_template, model_args.model_name_or_path)  # the SFT stage's rule
    trained_with = tokenizer.chat_template
    assert trained_with == (LLAMA3_TEMPLATE if llama else MISTRAL_CHAT_TEMPLATE)
    monkeypatch.chdir(tmp_path)
    tokenizer.save_pretrained(sft_output)  # what the SFT run leaves in its output_dir, with the model

    simpo_model, simpo_data, simpo_args = parse(
        os.path.join(CONFIG_DIR, SFT_RUNS[name][1]), f"--model_name_or_path={sft_output}"
    )
    stage_two = get_tokenizer(simpo_model)
    set_chat_template(stage_two, simpo_data.chat_template, simpo_model.model_name_or_path)  # the SimPO stage's rule
    assert stage_two.chat_template == trained_with
    assert simpo_args.max_length <= 2048  # the SFT stage trained on conversations up to 2048 tokens


# A current family beyond the paper, with the v0.2 recipe: the keys that differ from llama-3-8b-instruct-simpo-v2.yaml.
BEYOND_THE_PAPER = {
    "qwen2.5-7b-instruct-simpo-v2.yaml": {
        "model_name_or_path": "Qwen/Qwen2.5-7B-Instruct",
        "dataset_mixer": {"outputs/onpolicy/qwen2.5-7b-instruct-v2/dataset": 1.0},
        "auto_insert_empty_system_msg": False,
        "output_dir": "outputs/qwen2.5-7b-instruct-simpo-v2",
        "run_name": "qwen2.5-7b-instruct-simpo-v2",
    }
}


@pytest.mark.parametrize("name", sorted(BEYOND_THE_PAPER))
def test_a_config_beyond_the_paper_is_the_v2_recipe_with_its_model_and_data(name, parse):
    import yaml

    with open(os.path.join(CONFIG_DIR, "llama-3-8b-instruct-simpo-v2.yaml")) as f:
        v2 = yaml.safe_load(f)
    with open(os.path.join(CONFIG_DIR, name)) as f:
        config = yaml.safe_load(f)
    changed = BEYOND_THE_PAPER[name]
    assert {k: v for k, v in config.items() if k not in changed} == {k: v for k, v in v2.items() if k not in changed}
    assert {k: config[k] for k in changed} == changed
    model_args, data_args, args = parse(os.path.join(CONFIG_DIR, name))
    assert (args.beta, args.gamma_beta_ratio, args.learning_rate) == (10.0, 0.3, 1e-6)
    assert data_args.auto_insert_empty_system_msg is False and data_args.chat_template is None


def test_the_qwen_config_trains_on_what_its_pipeline_samples_and_scores_the_reply_alone(parse):
    """Qwen2.5's own template (tests/helpers/family_templates.py): the pipeline config samples from the ids training
    feeds; the default system prompt is in the prompt, once, and never in the scored reply."""
    from family_templates import family_tokenizer

    from simpo.data.tokenization import generation_prompt_ids, tokenize_row
    from simpo.pipeline.config import parse_pipeline_args

    model_args, data_args, _ = parse(os.path.join(CONFIG_DIR, "qwen2.5-7b-instruct-simpo-v2.yaml"))
    pipeline_model, pipeline_data, _ = parse_pipeline_args(
        [os.path.join(REPO, "onpolicy_configs", "qwen2.5-7b-instruct-v2.yaml")], "simpo-generate", ""
    )
    assert pipeline_model.model_name_or_path == model_args.model_name_or_path
    assert pipeline_data.auto_insert_empty_system_msg == data_args.auto_insert_empty_system_msg
    tokenizer = family_tokenizer("qwen2.5")
    set_chat_template(tokenizer, data_args.chat_template, model_args.model_name_or_path)
    turns = [{"role": "user", "content": "Name a colour."}]
    row = {
        "prompt": turns,
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "x"}],
    }
    rendered = apply_chat_template(row, tokenizer, data_args.auto_insert_empty_system_msg)
    assert rendered["prompt"].count("You are Qwen, created by Alibaba Cloud.") == 1
    assert rendered["chosen"] == "<|im_start|>assistant\nBlue.<|im_end|>\n"
    trained = tokenize_row(rendered, tokenizer, max_length=2048, max_prompt_length=1800)["chosen_input_ids"]
    sampled_from = generation_prompt_ids(turns, tokenizer, pipeline_data.auto_insert_empty_system_msg)
    assert sampled_from == trained[: len(sampled_from)]
    official = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert sampled_from == tokenizer(official, add_special_tokens=False)["input_ids"]
