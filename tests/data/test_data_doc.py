"""docs/data.md's check snippet runs as written (from the repository, on the tiny model and data) and shows what
training scores: it applies the chat template to a row of a user's own file before tokenising it."""

import json
import os
import re

from conftest import REPO

DOC = os.path.join(REPO, "docs", "data.md")


def snippet() -> str:
    section = open(DOC, encoding="utf-8").read().split("### Check your data and template")[1]
    return re.search(r"```python\n(.*?)\n```", section, flags=re.S).group(1)


def test_the_check_snippet_runs_on_a_row_of_a_file_and_shows_bos_once_and_the_scored_reply(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    namespace = {}
    exec(compile(snippet(), DOC, "exec"), namespace)
    tokens, scored = capsys.readouterr().out.splitlines()
    tokenizer = namespace["tokenizer"]
    assert tokens.startswith("['<|begin_of_text|>', '<|start_header_id|>'") and tokens.count("<|begin_of_text|>") == 1
    with open(os.path.join(REPO, "data", "tiny-prefs", "train.jsonl")) as f:
        row = json.loads(next(f))
    reply = row["chosen"][-1]["content"]
    assert eval(scored) == f"<|start_header_id|>assistant<|end_header_id|>\n\n{reply}<|eot_id|>"
    assert tokenizer.decode(namespace["out"]["chosen_input_ids"]).count(row["chosen"][0]["content"]) == 1
