"""Preference data: reading and mixing sources (mixer.py), row validation and counted drops (validation.py), chat
templates (chat_templates.py), tokenisation of preference pairs (tokenization.py).

What changes here: which rows are read and how they become the tokens a run scores; never the loss or the run."""
