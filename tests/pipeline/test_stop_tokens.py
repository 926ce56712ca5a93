"""The tokens a reply stops at (simpo-generate, simpo-answer, simpo-eval-setup): the model's EOS ids and the token its
chat template ends an assistant turn with, per model family. A Llama-3 base model's SFT output lists only
<|end_of_text|> in its generation_config, but the Llama-3 template ends each turn with <|eot_id|>; the reference's
evaluation configs stop at both."""

import os
import shutil

import pytest
import yaml
from conftest import REPO, TINY_MODEL
from templates import LLAMA3
from transformers import AutoTokenizer, GenerationConfig

from simpo.data.chat_templates import set_chat_template
from simpo.pipeline.backends import model_stop_ids, stop_ids, turn_end_id

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
GEMMA_SPECIALS = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]


def config_template(name: str) -> str:
    with open(os.path.join(REPO, "training_configs", name)) as f:
        return yaml.safe_load(f)["chat_template"]


def names(tokenizer, ids) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)


def llama3_base_sft(make_tokenizer):
    """Meta-Llama-3-8B's special tokens (EOS <|end_of_text|>) with the SFT config's Llama-3 template."""
    return make_tokenizer(
        LLAMA3_SPECIALS,
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
        template=config_template("llama-3-8b-base-sft.yaml"),
    )


def test_llama3_base_sft_output_stops_at_end_of_text_and_at_eot_id(make_tokenizer):
    tok = llama3_base_sft(make_tokenizer)
    generation_config = GenerationConfig(eos_token_id=tok.convert_tokens_to_ids("<|end_of_text|>"))
    assert names(tok, stop_ids(generation_config, tok)) == ["<|end_of_text|>", "<|eot_id|>"]
    assert names(tok, stop_ids(GenerationConfig(), tok)) == ["<|end_of_text|>", "<|eot_id|>"]  # none saved


def test_llama3_instruct_keeps_its_two_eos_ids_once_each(make_tokenizer):
    tok = make_tokenizer(LLAMA3_SPECIALS, bos="<|begin_of_text|>", eos="<|eot_id|>", template=LLAMA3)
    both = tok.convert_tokens_to_ids(["<|end_of_text|>", "<|eot_id|>"])
    assert names(tok, stop_ids(GenerationConfig(eos_token_id=both), tok)) == ["<|end_of_text|>", "<|eot_id|>"]


def test_mistral_turns_end_with_eos_so_eos_alone_stops(make_tokenizer):
    tok = make_tokenizer(["<s>", "</s>"], bos="<s>", eos="</s>")
    set_chat_template(tok, None, "mistralai/Mistral-7B-v0.1")  # simpo's [INST] template
    assert names(tok, [turn_end_id(tok)]) == ["</s>"]
    assert names(tok, stop_ids(GenerationConfig(eos_token_id=tok.eos_token_id), tok)) == ["</s>"]


def test_gemma2_stops_at_end_of_turn_even_when_only_eos_is_listed(make_tokenizer):
    tok = make_tokenizer(GEMMA_SPECIALS, bos="<bos>", eos="<eos>", template=config_template("gemma-2-9b-it-simpo.yaml"))
    assert names(tok, stop_ids(GenerationConfig(eos_token_id=tok.eos_token_id), tok)) == ["<eos>", "<end_of_turn>"]
    both = tok.convert_tokens_to_ids(["<eos>", "<end_of_turn>"])  # gemma-2-9b-it's own generation_config
    assert names(tok, stop_ids(GenerationConfig(eos_token_id=both), tok)) == ["<eos>", "<end_of_turn>"]


def test_chatml_stops_at_im_end_and_plain_text_or_no_template_adds_nothing(make_tokenizer):
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    tok = make_tokenizer(["<|im_start|>", "<|im_end|>", "<|endoftext|>"], eos="<|endoftext|>", template=chatml)
    assert names(tok, stop_ids(GenerationConfig(), tok)) == ["<|endoftext|>", "<|im_end|>"]
    plain = make_tokenizer(["</s>"], eos="</s>", template="{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    assert turn_end_id(plain) is None and stop_ids(GenerationConfig(), plain) == [plain.eos_token_id]
    bare = make_tokenizer(["</s>"], eos="</s>")
    assert turn_end_id(bare) is None


@pytest.fixture
def base_like_model(tmp_path):
    """The tiny Llama (its template ends turns with <|eot_id|>, id 1) saved with a generation_config whose only EOS
    is another token, as a Llama-3 base model's SFT output lists only <|end_of_text|>."""
    folder = tmp_path / "model"
    shutil.copytree(TINY_MODEL, folder)
    GenerationConfig(bos_token_id=0, eos_token_id=2).save_pretrained(folder)
    return str(folder)


def test_the_backends_stop_at_the_template_turn_end_too(base_like_model):
    from types import SimpleNamespace

    from simpo.pipeline.backends import TransformersBackend

    tok = AutoTokenizer.from_pretrained(base_like_model)
    tok.pad_token = tok.eos_token
    assert model_stop_ids(base_like_model, tok) == [2, 1]
    args = SimpleNamespace(
        model_name_or_path=base_like_model,
        model_revision="main",
        trust_remote_code=False,
        torch_dtype="float32",
        attn_implementation="sdpa",
    )
    backend = TransformersBackend(args, tok, temperature=0.0, top_p=1.0, max_tokens=4)
    assert backend.stop_ids == [2, 1] and backend.config.eos_token_id == [2, 1]
