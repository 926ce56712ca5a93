"""Data: reading and mixing sources (mixer), row validation and counted drops, chat templates, tokenisation of
preference pairs."""
