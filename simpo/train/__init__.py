"""SimPO training (simpo-train): SimPOConfig, the trainer, batch layouts, log-probs, the loss, metrics, samples
and the recipe."""
