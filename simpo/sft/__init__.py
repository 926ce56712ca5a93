"""The SFT stage (simpo-sft): its config (config.py), conversation data (data.py), assistant-only labels
(tokenization.py), what an SFT run reports (reporting.py) and the recipe (recipe.py), on TRL's SFTTrainer.

What changes here: the SFT stage alone; it shares the run's lifecycle (simpo/run/) with SimPO, never SimPO's code."""
