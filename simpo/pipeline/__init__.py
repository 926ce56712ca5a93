"""On-policy data (simpo-generate, simpo-annotate, simpo-binarise): prompts, sampling backends, scoring,
binarising, and the resumable work units they run on."""
