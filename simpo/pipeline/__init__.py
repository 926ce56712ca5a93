"""On-policy data (simpo-generate, simpo-annotate, simpo-binarise): its settings (config.py), prompts (prompts.py),
sampling backends (backends.py), scoring with a reward model or function (annotate.py, rewards.py), binarising
(binarise.py), and the resumable work units they run on (work_units.py).

What changes here: how preference pairs are made from a policy's own samples; training on them is simpo/train/'s."""
