"""SimPO training (simpo-train): SimPOConfig (config.py), the trainer (trainer.py), batch layouts (layouts/), log-probs
(logps.py), the loss (loss.py), metrics (metrics.py), the speed choices (memory_plan.py, liger.py), sample generations
(samples.py), what a SimPO run reports (reporting.py) and the recipe (recipe.py).

What changes here: what SimPO trains and how fast; the run's lifecycle is simpo/run/'s, the data's simpo/data/'s."""
