"""The start-up self-check (simpo/train/self_check/) on this device, as its table: every fast path a run with the
settings at auto would take (layouts with FlexAttention or dense masks, padding-free or not; Triton or torch tiles;
Liger where installed), each compared with the plain path on the same slice, its figures, its step time where timed,
and the decision. On a random Llama-3.2-1B-shape model in bf16 (benchmarks/gpu_train_setup.py: the same model and
synthetic pairs as the end-to-end benchmark), one training step, self_check: always.

    python benchmarks/self_check_device.py --out-dir OUT            # a GPU: OUT/self_check_<gpu>.{json,md}
    python benchmarks/self_check_device.py --smoke --out-dir OUT    # the CPU rehearsal: a small model in fp32
"""

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_train import LLAMA_3_2_1B, SETTINGS, shared_config  # noqa: E402
from gpu_train_setup import build_model, parse_config, synthetic_pairs, word_tokenizer  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out-dir", required=True)
    options = parser.parse_args(argv)
    from datasets import Dataset

    from simpo.train.self_check import decision_lines, table
    from simpo.train.trainer import SimPOTrainer

    s = SETTINGS["smoke" if options.smoke else "gpu"]
    shape = s["shape"] if options.smoke else LLAMA_3_2_1B
    with tempfile.TemporaryDirectory() as tmp:
        keys = {**shared_config(s, batch=s["batch"], steps=1, output_dir=tmp), "self_check": "always"}
        model_args, args = parse_config(keys, Path(tmp))
        tokenizer = word_tokenizer(shape["vocab_size"])
        model = build_model(shape, tokenizer, model_args, args, s["device"])
        pairs = Dataset.from_list(synthetic_pairs(4 * s["batch"], s["lengths"], shape["vocab_size"], seed=0))
        trainer = SimPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    decision = trainer.self_check.decision
    device = re.sub(r"[^A-Za-z0-9]+", "_", decision.device).strip("_")
    lines = [
        f"# The start-up self-check on {decision.device}",
        "",
        f"model: random Llama {'(smoke shape)' if options.smoke else '3.2-1B shape'}, {decision.dtype}; settings at "
        f"auto; the check and one training step took {seconds:.1f} s.",
        "",
        *(f"- {text}" for text in decision_lines(decision)),
        "",
        *table(decision),
    ]
    out = Path(options.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"self_check_{device}.md").write_text("\n".join(lines) + "\n")
    (out / f"self_check_{device}.json").write_text(json.dumps(decision.to_dict(), indent=1))
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
