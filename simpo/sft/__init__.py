"""The SFT stage (simpo-sft): its config, conversation data, assistant-only labels, reporting and recipe."""
