"""Decoding settings for AlpacaEval 2, Arena-Hard and MT-Bench, per model family, as the SimPO reference evaluated
its released models, and the family of a chat template.

Sources: princeton-nlp/SimPO eval/alpacaeval2/configs/*.yaml and eval/arenahard/configs/*/gen_answer_config.yaml
(Llama-3 base and instruct, Mistral base and instruct); Gemma-2's AlpacaEval config is the one the authors put in
tatsu-lab/alpaca_eval (models_configs/gemma-2-9b-it-SimPO); the reference ships no Arena-Hard config for Gemma-2,
so it gets arena-hard-auto's own default (greedy, 4096 tokens) like the others. MT-Bench decodes as FastChat's
llm_judge does: a temperature per question category, at most 1024 new tokens.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Decoding:
    temperature: float  # 0 is greedy
    top_p: float
    max_new_tokens: int


ARENA_HARD = Decoding(temperature=0.0, top_p=1.0, max_new_tokens=4096)
FAMILIES = {  # family: (AlpacaEval 2, Arena-Hard)
    "llama3": (Decoding(0.9, 1.0, 4096), ARENA_HARD),
    "mistral-instruct": (Decoding(0.5, 1.0, 2048), ARENA_HARD),
    "mistral-base": (Decoding(0.7, 1.0, 2048), ARENA_HARD),
    "gemma2": (Decoding(0.5, 1.0, 4096), ARENA_HARD),
    # No reference setting: AlpacaEval's usual sampling for local models.
    "other": (Decoding(0.7, 1.0, 2048), ARENA_HARD),
}
# Markers of the chat templates the training configs use (Mistral-base is the Zephyr SFT model's template).
MARKERS = (
    ("<|start_header_id|>", "llama3"),
    ("<start_of_turn>", "gemma2"),
    ("[INST]", "mistral-instruct"),
    ("<|user|>", "mistral-base"),
)

MT_BENCH_TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
MT_BENCH_OTHER_TEMPERATURE = 0.7
MT_BENCH_MAX_NEW_TOKENS = 1024


def family_of(chat_template: str) -> str:
    return next((family for marker, family in MARKERS if marker in chat_template), "other")


def decoding(family: str, benchmark: str, category: str | None = None) -> Decoding:
    if benchmark == "mt_bench":
        return Decoding(MT_BENCH_TEMPERATURE.get(category, MT_BENCH_OTHER_TEMPERATURE), 1.0, MT_BENCH_MAX_NEW_TOKENS)
    alpaca_eval, arena_hard = FAMILIES[family]
    return {"alpaca_eval": alpaca_eval, "arena_hard": arena_hard}[benchmark]
