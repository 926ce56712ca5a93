"""Looking at finished runs: benchmark set-ups (simpo-eval-setup: setup.py, templates.py, instructions.py,
families.py), the model's answers to a benchmark's questions (simpo-answer: answer.py), and training curves
(simpo-plot: curves.py).

What changes here: how a finished run is evaluated and shown; it reads runs, never trains them."""
