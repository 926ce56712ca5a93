"""Supervised fine-tuning (SFT), the stage before SimPO for base models.

    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml scripts/run_sft.py \
        CONFIG.yaml [--key=value ...]

The recipe (parse, seed, data, tokenizer, tokens, trainer, train, save, card) is simpo/sft/recipe.py:sft_main.
"""

from simpo.sft.recipe import main

if __name__ == "__main__":
    main()
