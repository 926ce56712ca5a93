"""Models and tokenizers: loading them with an error that names the key (loading.py: tokenizer set-up, the
from_pretrained kwargs, quantisation, the LoRA config, loading for generation), and what a loaded model is
(modules.py: the model under its wrappers, quantised or not, dropout off).

What changes here: how a model is found, loaded and wrapped; never what a recipe trains it on."""
