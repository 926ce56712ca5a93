"""Build the offline SFT demo data: chat transcripts made from the conversations of data/tiny-prefs.

Writes, deterministically (same bytes on every run), data/tiny-chat/{train,test}.jsonl in UltraChat-200k's format
(prompt, prompt_id, messages). Each transcript takes one or two pairs of data/tiny-prefs [same split], in file order,
and keeps their user turns and chosen (polite) replies: 1 or 2 rounds, a quarter of them opening with a system
message. Train transcripts come from train pairs, test transcripts from test pairs, whose topic combinations never
occur in train, so the held-out loss measures what the model learned, not what it memorised.

Why: the SFT recipe (scripts/run_sft.py, training_configs/tiny-sft-cpu.yaml) runs end to end with no hub access, on
multi-turn rows, in seconds on CPU, and its output feeds the tiny SimPO run.

Usage (from the repo root, after data/tiny-prefs exists): python scripts/build_tiny_chat.py
"""

import hashlib
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREFS_DIR, CHAT_DIR = ROOT / "data" / "tiny-prefs", ROOT / "data" / "tiny-chat"
SEED = 5678
SYSTEM = "you are a polite assistant"


def transcripts(pairs: list[dict], rng: random.Random) -> list[dict]:
    rows, i = [], 0
    while i < len(pairs):
        rounds = 2 if rng.random() < 0.4 and i + 1 < len(pairs) else 1
        messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.25 else []
        for pair in pairs[i : i + rounds]:
            messages += pair["chosen"]  # [user, assistant]
        i += rounds
        first_user = next(m["content"] for m in messages if m["role"] == "user")
        rows.append(
            {"prompt": first_user, "prompt_id": hashlib.sha256(first_user.encode()).hexdigest(), "messages": messages}
        )
    return rows


def main() -> None:
    rng = random.Random(SEED)
    CHAT_DIR.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with open(PREFS_DIR / f"{split}.jsonl", encoding="utf-8") as f:
            pairs = [json.loads(line) for line in f]
        rows = transcripts(pairs, rng)
        with open(CHAT_DIR / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        multi = sum(sum(m["role"] == "assistant" for m in r["messages"]) > 1 for r in rows)
        print(f"{split}: {len(rows)} transcripts ({multi} with two rounds) -> {CHAT_DIR.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
