import logging

import torch
from conftest import TINY_MODEL

from simpo.config.arguments import ModelArguments
from simpo.models.loading import get_tokenizer, model_init_kwargs
from simpo.train.config import SimPOConfig
from simpo.train.trainer import load_model


def test_tokenizer_pads_with_eos_and_caps_absurd_lengths():
    tokenizer = get_tokenizer(ModelArguments(model_name_or_path=TINY_MODEL))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer.model_max_length <= 2048


def test_model_kwargs_and_lazy_load(tmp_path, caplog):
    args = SimPOConfig(output_dir=str(tmp_path), use_cpu=True, activation_checkpointing=True)
    model_args = ModelArguments(
        model_name_or_path=TINY_MODEL, torch_dtype="bfloat16", attn_implementation="flash_attention_2"
    )
    with caplog.at_level(logging.WARNING):
        kwargs = model_init_kwargs(model_args, args)
    assert "flash-attn is not installed: using sdpa instead" in caplog.text
    assert kwargs == {
        "revision": "main",
        "trust_remote_code": False,
        "attn_implementation": "sdpa",
        "dtype": "bfloat16",
        "use_cache": False,
    }
    args.model_init_kwargs = kwargs
    model = load_model(TINY_MODEL, args)
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "sdpa"
    assert model.config.use_cache is False


def test_quantised_loading_gets_a_per_process_device_map(tmp_path):
    args = SimPOConfig(output_dir=str(tmp_path), use_cpu=True)
    kwargs = model_init_kwargs(
        ModelArguments(
            model_name_or_path=TINY_MODEL, load_in_4bit=True, bnb_4bit_quant_type="nf4", torch_dtype="bfloat16"
        ),
        args,
    )
    assert kwargs["device_map"] == {"": "cpu"}
    q = kwargs["quantization_config"]
    assert q["load_in_4bit"] and q["bnb_4bit_quant_type"] == "nf4" and q["bnb_4bit_compute_dtype"] == "bfloat16"
    assert "quantization_config" not in model_init_kwargs(ModelArguments(model_name_or_path=TINY_MODEL), args)
    args.model_init_kwargs = kwargs  # logged as JSON (TensorBoard, W&B): a dict serialises, a config object would not
    assert '"bnb_4bit_quant_type": "nf4"' in args.to_json_string()


def test_a_model_that_is_neither_a_folder_nor_on_the_hub_names_the_key(tmp_path, monkeypatch):
    import pytest

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=f"model_name_or_path: there is no folder '{tmp_path}/sft'. Give a"):
        get_tokenizer(ModelArguments(model_name_or_path=str(tmp_path / "sft")))
    # A relative name like outputs/x could be a Hub id: the error says both were tried.
    with pytest.raises(
        OSError,
        match=r"tokenizer_name_or_path: 'outputs/none-such' is not a local folder, and it"
        r" could not be loaded from the Hub \(HF_HUB_OFFLINE is set",
    ):
        get_tokenizer(ModelArguments(model_name_or_path=TINY_MODEL, tokenizer_name_or_path="outputs/none-such"))
