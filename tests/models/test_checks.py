"""Model settings refused at start-up, before the data is tokenised and the weights load, as one line naming the key
(simpo/models/checks.py): LoRA target names that match no module, a max_length beyond the model's context,
quantisation without a usable bitsandbytes, a tokenizer without an EOS token."""

import json
import os
import shutil
import sys

import pytest
from conftest import REPO, TINY_MODEL
from refusals import refused

from simpo.config.arguments import ModelArguments
from simpo.models.checks import context_length, lora_target_problems, model_config, module_names
from simpo.models.loading import get_peft_config
from simpo.run.commands import report_input_errors
from simpo.sft.recipe import sft_main
from simpo.train.config import SimPOConfig
from simpo.train.recipe import train_main

TINY = os.path.join(REPO, "training_configs", "tiny-simpo-cpu.yaml")
TINY_SFT = os.path.join(REPO, "training_configs", "tiny-sft-cpu.yaml")
QUIET = ["--report_to=none", "--do_eval=false", "--eval_strategy=no", "--eval_on_start=false", "--max_steps=1"]
TINY_LINEAR = "down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"
train = report_input_errors("simpo-train")(train_main)
sft = report_input_errors("simpo-sft")(sft_main)


def test_the_models_modules_are_read_on_the_meta_device_with_their_classes():
    modules = module_names(model_config(ModelArguments(model_name_or_path=TINY_MODEL)))
    assert modules["model.layers.0.self_attn.q_proj"].__name__ == "Linear"
    assert modules["model.layers.1.mlp"].__name__ == "LlamaMLP" and "model.embed_tokens" in modules


@pytest.mark.parametrize(
    "targets, to_save, problems",
    [
        (["q_proj", "v_proj"], None, []),
        (["self_attn.q_proj", "model.layers.0.mlp.up_proj"], ["lm_head"], []),
        (["all-linear"], None, []),
        (["q_proj", "v_projj"], None, ["lora_target_modules: 'v_projj' matches no module"]),
        (["mlp"], None, ["lora_target_modules: 'mlp' matches only LlamaMLP, which LoRA cannot adapt"]),
        (["all-linear", "q_proj"], None, ["lora_target_modules: 'all-linear' stands for every linear layer, alone"]),
        (None, ["lm_haed"], ["lora_modules_to_save: 'lm_haed' matches no module"]),
    ],
)
def test_lora_names_follow_peft_matching(targets, to_save, problems):
    modules = module_names(model_config(ModelArguments(model_name_or_path=TINY_MODEL)))
    found = lora_target_problems(targets, to_save, modules)
    assert len(found) == len(problems) and all(f.startswith(p) for f, p in zip(found, problems))


@pytest.mark.parametrize("main", [train, sft], ids=["simpo", "sft"])
@pytest.mark.parametrize("targets", ["q_proj,v_projj", "qq_proj,vv_proj"])
def test_a_lora_target_typo_is_refused_listing_the_models_linear_layers(capsys, tmp_path, main, targets):
    """peft would train q_proj alone for the first (recording both names) and raise NoMatchingPeftModuleError for the
    second."""
    config = TINY if main is train else TINY_SFT
    out = tmp_path / "out"
    wrong = " matches no module; ".join(f"lora_target_modules: '{t}'" for t in targets.split(",") if t != "q_proj")
    refused(
        capsys,
        main,
        [config, "--use_peft=true", f"--lora_target_modules={targets}", f"--output_dir={out}", *QUIET],
        rf"^LoRA module names that assets/tiny-llama \(llama\) does not have: {wrong} matches no module\. Its layers"
        rf" LoRA can adapt are named {TINY_LINEAR}: give some",
    )
    assert not out.exists()


def test_all_linear_given_as_a_key_reaches_peft_as_its_shorthand():
    args = SimPOConfig(output_dir="unused", use_cpu=True)
    given = get_peft_config(ModelArguments(use_peft=True, lora_target_modules=["all-linear"]), args)
    assert given.target_modules == "all-linear"
    assert get_peft_config(ModelArguments(use_peft=True), args).target_modules == "all-linear"
    assert get_peft_config(ModelArguments(use_peft=True, lora_target_modules=["q_proj"]), args).target_modules == {
        "q_proj"
    }


def test_a_lora_run_with_checked_targets_trains_adapters_on_exactly_those(tmp_path):
    from transformers import TrainerCallback

    class Adapted(TrainerCallback):
        names = []

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            Adapted.names = sorted({n.split(".")[-4] for n, p in model.named_parameters() if p.requires_grad})

    train_main(
        [TINY, "--use_peft=true", "--lora_target_modules=q_proj,v_proj", f"--output_dir={tmp_path / 'out'}", *QUIET],
        callbacks=[Adapted()],
    )
    assert Adapted.names == ["q_proj", "v_proj"]


def test_max_length_beyond_the_models_context_is_refused_before_anything_loads(capsys, tmp_path):
    out = tmp_path / "out"
    refused(
        capsys,
        train,
        [TINY, "--max_length=2048", "--max_prompt_length=1800", f"--output_dir={out}", *QUIET],
        r"^max_length 2048 is above the context of assets/tiny-llama \(max_position_embeddings = 512 in its config\):"
        r" .* Set --max_length=512 or lower",
    )
    assert not out.exists()
    config = model_config(ModelArguments(model_name_or_path=TINY_MODEL))
    assert context_length(config, None) == ("max_position_embeddings", 512)
    assert context_length(config, {"max_position_embeddings": 4096}) == ("max_position_embeddings", 4096)


def test_quantisation_without_a_usable_bitsandbytes_is_refused_naming_the_key(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import raises ImportError, as when it is not installed
    refused(
        capsys,
        train,
        [TINY, "--use_peft=true", "--load_in_4bit=true", f"--output_dir={tmp_path / 'out'}", *QUIET],
        r"^load_in_4bit: true needs bitsandbytes, which cannot be imported here \((ModuleNotFound|Import)Error: .*\)\."
        r" Install it \(pip install bitsandbytes\), or set load_in_4bit: false",
    )


def test_a_tokenizer_without_eos_is_refused_before_run_config_is_written(capsys, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(TINY_MODEL, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    del config["eos_token"]
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    refused(
        capsys,
        train,
        [TINY, f"--model_name_or_path={model}", f"--output_dir={out}", *QUIET],
        rf"^The tokenizer of model_name_or_path={model} has no EOS token \(eos_token is unset\), so replies cannot end"
        rf" with one and batches have no pad token\. Set eos_token in {model}/tokenizer_config.json",
    )
    assert not (out / "run_config.yaml").exists()
