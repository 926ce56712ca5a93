"""Train a model with SimPO.

    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml scripts/run_simpo.py \
        CONFIG.yaml [--key=value ...]

The recipe (parse, seed, data, tokenizer, model, train, save, card) is simpo/train/recipe.py:train_main.
"""

from simpo.train.recipe import main

if __name__ == "__main__":
    main()
