"""SimPO (Simple Preference Optimization, Meng, Xia & Chen 2024) on the current Hugging Face stack.

The package's rooms, from the bottom layer up (each imports only from itself and the rooms below it;
tests/test_architecture.py enforces this; docs/architecture.md has the table of modules):

    errors.py, environment.py   every error class; what is read from the environment (import nothing of simpo)
    kernels/     the fused log-prob kernels (torch tiles, Triton tiles) and the one place one is chosen
    data/        preference data: sources and mixing, row checks, chat templates, tokenisation of pairs
    config/      the YAML + --key=value parser, the shared argument groups, the run's record (run_config.yaml)
    models/      loading models and tokenizers, from_pretrained kwargs, LoRA, what a loaded model is
    reporting/   what a run tells its user: logs, summaries, throughput, curves
    run/         a run's lifecycle and safety: launch checks, folder lock, resume, signals, elastic resume, finite
                 checks, the steps every recipe shares, how a command ends on an error
    train/ sft/ pipeline/   the SimPO recipe, the SFT stage, the on-policy data pipeline (siblings)
    evaluation/  benchmark set-ups, answers, and curves of finished runs
"""

__version__ = "0.1.0"
