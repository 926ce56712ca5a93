import math
import os
import string
import sys

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton kernels (simpo/kernels/triton_tiles.py) run on CPU tensors only through Triton's interpreter, and triton
# fixes that choice for its own language functions when it is first imported, which any test may do (trl imports it): so
# here, before all of them. tests/kernels/test_triton_tiles.py checks that it took effect.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("SIMPO_TILE_CACHE", "off")  # no test writes the user's ~/.cache/simpo/tiles.json
os.environ.setdefault("SIMPO_SELF_CHECK_CACHE", "off")  # nor self_check.json: every test run checks
# As every command does first (simpo/environment.py): in-process runs compared bit for bit need it before MKL's
# first call.
os.environ.setdefault("MKL_CBWR", "AUTO")
# DeepSpeed builds its ops on first use into torch's extensions folder, by default ~/.cache/torch_extensions, which
# every environment on the machine shares (and where a killed build leaves its lock). The suite builds into a folder
# of its own environment instead, so that neither another venv's builds nor a stale lock there can touch it.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = os.path.join(REPO, "assets", "tiny-llama")
TINY_DATA = os.path.join(REPO, "data", "tiny-prefs")


def char_tokenizer(specials: list[str], merges: list[tuple[str, str]] = (), bos=None, eos=None, template=None):
    """A character-level BPE tokenizer: one token per character unless a merge joins two (also across the
    prompt/response boundary, which is what the split logic must handle)."""
    chars = list(string.printable)
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos)
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture
def make_tokenizer():
    return char_tokenizer


def tiny_rows(count: int):
    """The shipped tiny tokenizer (padding with EOS) and the first `count` pairs of the tiny train data, rendered with
    its chat template: the prompt/chosen/rejected strings SimPOTrainer takes."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from simpo.data.chat_templates import apply_chat_template

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    tokenizer.pad_token = tokenizer.eos_token
    rows = load_dataset("json", data_files=os.path.join(TINY_DATA, "train.jsonl"), split="train").select(range(count))
    rows = rows.map(apply_chat_template, fn_kwargs={"tokenizer": tokenizer}, remove_columns=rows.column_names)
    return tokenizer, rows


def tiny_config(output_dir, **settings):
    """A SimPOConfig for an in-process run on the tiny data: on the CPU, reporting nowhere, saving nothing, at the tiny
    config's lengths; `settings` add to these or replace them."""
    from simpo.train.config import SimPOConfig

    defaults = dict(use_cpu=True, report_to="none", max_length=128, max_prompt_length=64, save_strategy="no")
    return SimPOConfig(output_dir=str(output_dir), **{**defaults, **settings})


def log_sigmoid(x: float) -> float:
    """Scalar log(sigmoid(x)), computed independently of torch."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def reference_avg_logp(model, input_ids: list[int], labels: list[int]) -> float:
    """One unpadded sequence at a time: mean over response tokens of log p(token | everything before it)."""
    with torch.no_grad():
        logits = model(torch.tensor([input_ids])).logits[0].double()
    logps = [logits[t - 1].log_softmax(-1)[input_ids[t]].item() for t in range(1, len(labels)) if labels[t] != -100]
    return sum(logps) / len(logps)


def pytest_sessionstart(session):
    """A build lock no process holds, left in the suite's own extensions folder by a killed run of it, would make
    every DeepSpeed test refuse to start (simpo/run/launch.py): it is removed here, the folder being the suite's."""
    from simpo.run.launch import extension_build_locks, unheld

    for path in unheld(extension_build_locks()):
        if path.startswith(os.environ["TORCH_EXTENSIONS_DIR"]):
            os.remove(path)
