"""Evaluation set-ups (simpo-eval-setup) and answers (simpo-answer) for AlpacaEval 2, Arena-Hard and MT-Bench."""
