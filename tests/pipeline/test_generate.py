"""simpo-generate's parts: the unit plan, the transformers backend against unbatched generation, the config."""

import os
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import REPO, TINY_MODEL
from transformers import AutoModelForCausalLM, AutoTokenizer

from simpo.errors import ConfigError
from simpo.pipeline.backends import TransformersBackend
from simpo.pipeline.config import parse_pipeline_args
from simpo.pipeline.generate import plan_units

MODEL_ARGS = SimpleNamespace(
    model_name_or_path=TINY_MODEL,
    model_revision="main",
    trust_remote_code=False,
    torch_dtype="float32",
    attn_implementation="sdpa",
)
PROMPTS = ["tell me about the river", "hi", "compare the old kettle and the noisy guitar please", "why"]


@pytest.fixture(scope="module")
def tokenizer():
    tok = AutoTokenizer.from_pretrained(TINY_MODEL)
    tok.pad_token = tok.eos_token
    return tok


def prompt_ids(tokenizer):
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in PROMPTS
    ]


def test_plan_covers_every_prompt_and_seed_once_in_length_ordered_batches():
    ids = {"train": [[0] * n for n in (5, 1, 9, 3, 7)], "test": [[0] * 2]}
    units = plan_units(ids, seeds=[13, 21], batch_size=2)
    assert len({u.name for u in units}) == len(units)
    covered = sorted((u.split, u.seed, row) for u in units for row in u.rows)
    assert covered == sorted((s, seed, r) for s, rows in ids.items() for seed in (13, 21) for r in range(len(rows)))
    assert [u.rows for u in units if u.split == "train" and u.seed == 13] == [(1, 3), (0, 4), (2,)]


def test_greedy_batched_left_padded_generation_equals_one_prompt_at_a_time(tokenizer):
    backend = TransformersBackend(MODEL_ARGS, tokenizer, temperature=0.0, top_p=1.0, max_tokens=12)
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompt_ids(tokenizer)]
    batched = backend.generate(ids, batch_seed=0, row_seeds=[])
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL).eval()
    for prompt, reply in zip(ids, batched):
        with torch.no_grad():  # plain greedy decoding, no padding, no generate()
            seq = list(prompt)
            for _ in range(12):
                token = model(torch.tensor([seq])).logits[0, -1].argmax().item()
                if token == tokenizer.eos_token_id:
                    break
                seq.append(token)
        assert reply == tokenizer.decode(seq[len(prompt) :], skip_special_tokens=True).strip()


def test_sampling_is_fixed_by_the_batch_seed(tokenizer):
    backend = TransformersBackend(MODEL_ARGS, tokenizer, temperature=0.8, top_p=0.95, max_tokens=12)
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompt_ids(tokenizer)]
    first = backend.generate(ids, batch_seed=123, row_seeds=[])
    assert backend.generate(ids, batch_seed=123, row_seeds=[]) == first
    assert backend.generate(ids, batch_seed=124, row_seeds=[]) != first


def test_a_reply_is_cut_at_its_first_end_of_turn(tokenizer):
    backend = SimpleNamespace(stop_ids=[tokenizer.eos_token_id], tokenizer=tokenizer)
    ab, cd = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("ab", "cd"))
    ids = [*ab, tokenizer.eos_token_id, *cd, tokenizer.eos_token_id]
    assert TransformersBackend.decode(backend, ids) == "ab"


def test_the_v02_pipeline_config_carries_the_reference_settings(tmp_path):
    model, data, args = parse_pipeline_args(
        [os.path.join(REPO, "onpolicy_configs", "llama-3-8b-instruct-v2.yaml")], "simpo-generate", ""
    )
    assert model.model_name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert data.dataset_mixer == {"HuggingFaceH4/ultrafeedback_binarized": 1.0}
    assert data.dataset_splits == ["train_prefs", "test_prefs"]
    assert (args.seeds, args.temperature, args.top_p, args.max_tokens) == ([13, 21, 42, 79, 100], 0.8, 0.95, 4096)
    assert (args.reward_model, args.reward_trust_remote_code) == ("RLHFlow/ArmoRM-Llama3-8B-v0.1", True)


def test_overrides_apply_and_keys_the_pipeline_does_not_use_are_refused():
    tiny = os.path.join(REPO, "onpolicy_configs", "tiny-cpu.yaml")
    _, _, args = parse_pipeline_args([tiny, "--seeds=1,2", "--temperature=0"], "simpo-generate", "")
    assert args.seeds == [1, 2] and args.temperature == 0.0
    with pytest.raises(ConfigError, match="'use_peft' has no effect on simpo-generate: remove it"):
        parse_pipeline_args([tiny, "--use_peft"], "simpo-generate", "")
    with pytest.raises(ConfigError, match="Unknown config key 'learning_rate'"):
        parse_pipeline_args([tiny, "--learning_rate=1e-6"], "simpo-generate", "")
    with pytest.raises(ConfigError, match="seeds must be distinct"):
        parse_pipeline_args([tiny, "--seeds=1,1"], "simpo-generate", "")


def test_every_pipeline_key_is_read():
    from config_fields import unread_fields

    from simpo.pipeline.config import OnPolicyArguments

    assert unread_fields(OnPolicyArguments) == []


GEMMA_SPECIALS = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
# Gemma's own template, in short: it names "system" only to refuse it.
GEMMA_OWN = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}"
    "\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def test_the_gemma2_pipeline_config_samples_from_the_ids_training_feeds(make_tokenizer):
    from simpo.data.chat_templates import apply_chat_template, set_chat_template
    from simpo.data.tokenization import generation_prompt_ids, tokenize_row
    from simpo.errors import TemplateError

    model, data, args = parse_pipeline_args(
        [os.path.join(REPO, "onpolicy_configs", "gemma-2-9b-it.yaml")], "simpo-generate", ""
    )
    assert model.model_name_or_path == "google/gemma-2-9b-it" and data.auto_insert_empty_system_msg
    assert data.dataset_mixer == {"HuggingFaceH4/ultrafeedback_binarized": 1.0}
    assert data.dataset_splits == ["train_prefs", "test_prefs"]
    assert (args.seeds, args.temperature, args.top_p, args.max_tokens) == ([13, 21, 42, 79, 100], 0.8, 0.95, 4096)
    assert (args.reward_model, args.reward_trust_remote_code) == ("RLHFlow/ArmoRM-Llama3-8B-v0.1", True)
    with open(os.path.join(REPO, "training_configs", "gemma-2-9b-it-simpo.yaml")) as f:
        training = yaml.safe_load(f)  # its model and template keys (the training keys need a bf16 GPU to parse)
    assert training["model_name_or_path"] == model.model_name_or_path and "auto_insert_empty_system_msg" not in training

    def gemma_tokenizer(template, name):
        tok = make_tokenizer(GEMMA_SPECIALS, bos="<bos>", eos="<eos>", template=GEMMA_OWN)
        set_chat_template(tok, template, name)
        return tok

    pipeline_tok = gemma_tokenizer(data.chat_template, model.model_name_or_path)
    training_tok = gemma_tokenizer(training["chat_template"], training["model_name_or_path"])
    for turns in (
        [{"role": "user", "content": "Name a colour."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    ):
        sampled_from = generation_prompt_ids(turns, pipeline_tok, data.auto_insert_empty_system_msg)
        row = {
            "prompt": turns,
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "x"}],
        }
        trained = tokenize_row(
            apply_chat_template(row, training_tok), training_tok, max_length=1024, max_prompt_length=512
        )["chosen_input_ids"]
        assert sampled_from == trained[: len(sampled_from)]
        assert pipeline_tok.convert_ids_to_tokens(sampled_from)[:2] == ["<bos>", "<start_of_turn>"]
        assert pipeline_tok.convert_ids_to_tokens(sampled_from)[-7:] == ["<start_of_turn>", *"model", "\n"]
    # Gemma's own template refuses system turns, so the rule inserts none: a user-only prompt gives the config
    # template's ids; a prompt with a system turn is refused with the template's message.
    own = gemma_tokenizer(None, model.model_name_or_path)
    user_only = [{"role": "user", "content": "Name a colour."}]
    assert generation_prompt_ids(user_only, own) == generation_prompt_ids(user_only, pipeline_tok)
    with pytest.raises(TemplateError, match="raises: System role not supported"):
        generation_prompt_ids([{"role": "system", "content": "Be brief."}, *user_only], own)
