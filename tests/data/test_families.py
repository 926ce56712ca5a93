"""Every scored token is the one the chat template and the data say, for today's model families (their real templates,
tests/helpers/family_templates.py): each row's ids and labels are compared with the template's own rendering of the
whole conversation, row by row; and for the reference's templates the text is what it was (the prompt rendered
without a generation prompt, each reply rendered alone)."""

import json
import os

import pytest
from conftest import REPO, TINY_DATA, TINY_MODEL
from datasets import Dataset
from family_templates import FAMILIES, family_tokenizer
from refusals import refused
from templates import GEMMA, LLAMA3
from transformers import AutoTokenizer

from simpo.data.chat_templates import MISTRAL_CHAT_TEMPLATE, apply_chat_template, render_pairs
from simpo.data.mixer import mix_datasets
from simpo.data.tokenization import generation_prompt_ids, response_header, tokenize_pairs
from simpo.errors import DataError, TemplateError
from simpo.run.commands import report_input_errors
from simpo.train.config import SimPOConfig
from simpo.train.recipe import train_main

USER = lambda text: {"role": "user", "content": text}
ASSISTANT = lambda text: {"role": "assistant", "content": text}
SYSTEM = lambda text: {"role": "system", "content": text}
REASONING = "<think>\nAdd two and two.\n</think>\n\nIt is 4."


def pair(history: list[dict], good: str, bad: str, prompt=None) -> dict:
    row = {"chosen": history + [ASSISTANT(good)], "rejected": history + [ASSISTANT(bad)]}
    return {**row, "prompt": prompt if prompt is not None else history[0]["content"]}


# No system turn (Gemma-2's and Mistral v0.2's templates refuse one: tested below), one exchange, several, a prompt
# message list continued by both replies, a reply with reasoning, whitespace the trimming templates drop.
ROWS = [
    pair([USER("What is 2+2?")], "4", "5"),
    pair([USER("a"), ASSISTANT("b"), USER("c")], "good", "bad"),
    {
        "prompt": [USER("plan a trip")],
        "chosen": [ASSISTANT("Where to?"), USER("Rome"), ASSISTANT("Day 1: the Forum.")],
        "rejected": [ASSISTANT("Where to?"), USER("Rome"), ASSISTANT("No.")],
    },
    pair([USER("What is 2+2?")], REASONING, "<think>\nGuess.\n</think>\n\nIt is 5."),
    pair([USER("Sum?"), ASSISTANT("<think>\nold\n</think>\n\n1"), USER("Again?")], REASONING, "2"),
    pair([USER("  spaced  ")], " Sure. \n", "\nNo"),
]


def prompt_and_replies(row: dict) -> tuple[list[dict], list[dict]]:
    """The test's own reading of a row: the turns before the replies, and the two replies."""
    before = row["prompt"] if isinstance(row["prompt"], list) else []
    return before + row["chosen"][:-1], [row["chosen"][-1], row["rejected"][-1]]


def expected_tokens(tok, turns: list[dict], reply: dict) -> tuple[list[int], list[int]]:
    """Independently of simpo: the whole conversation as the template renders it, tokenised, BOS first once and EOS
    last once; labels on everything after the prompt's own rendering."""
    encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    whole = tok.apply_chat_template(turns + [reply], tokenize=False)
    prompt = tok.apply_chat_template(turns, tokenize=False)
    assert whole.startswith(tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
    ids, start = encode(whole), len(encode(prompt))
    if tok.bos_token_id is not None and ids[0] != tok.bos_token_id:
        ids, start = [tok.bos_token_id] + ids, start + 1
    if ids[-1] != tok.eos_token_id:
        ids = ids + [tok.eos_token_id]
    return ids, [-100] * start + ids[start:]


def run_rows(tok, rows, auto_insert: bool, max_length: int = 512):
    """The recipe's rendering and tokenisation of `rows` (one data set: their prompts of one type)."""
    args = SimPOConfig(output_dir="unused", use_cpu=True, report_to="none", max_length=max_length)
    rendered = render_pairs({"train": Dataset.from_list(rows)}, tok, auto_insert)["train"]
    return tokenize_pairs(rendered, tok, args, "train_dataset")


def run_each(tok, rows, auto_insert: bool) -> list[dict]:
    """Each row tokenised on its own (a data set holds prompts of one type: ROWS mixes strings and lists); none
    dropped or cut."""
    tokenized = []
    for row in rows:
        kept, drops, cuts = run_rows(tok, [row], auto_insert)
        assert drops == [] and cuts == [], (row, drops, cuts)
        tokenized.append(kept[0])
    return tokenized


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_scored_tokens_are_the_templates_rendering_of_the_whole_conversation_row_by_row(family):
    tok = family_tokenizer(family)
    for row, tokens in zip(ROWS, run_each(tok, ROWS, auto_insert=False)):
        turns, (chosen, rejected) = prompt_and_replies(row)
        for side, reply in (("chosen", chosen), ("rejected", rejected)):
            ids, labels = expected_tokens(tok, turns, reply)
            assert tokens[f"{side}_input_ids"] == ids, (family, row, side)
            assert tokens[f"{side}_labels"] == labels, (family, row, side)


# With auto_insert_empty_system_msg on (the default), an empty system turn goes first where the template renders one.
INSERTS = {"llama-3.1", "llama-3.2", "qwen2.5", "qwen3", "gemma-3", "phi-4", "zephyr"}


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"mistral-v0.3"}))
def test_with_the_empty_system_turn_rule_every_reply_is_still_what_the_whole_conversation_renders(family):
    tok = family_tokenizer(family)
    for row, tokens in zip(ROWS, run_each(tok, ROWS, auto_insert=True)):
        turns, (chosen, _) = prompt_and_replies(row)
        turns = [SYSTEM("")] + turns if family in INSERTS else turns
        assert (tokens["chosen_input_ids"], tokens["chosen_labels"]) == expected_tokens(tok, turns, chosen)


def test_gemma2s_own_template_refuses_system_turns_so_none_is_inserted():
    """Gemma-2's template names "system" only to raise on it: the rule's empty system turn would fail every row."""
    tok = family_tokenizer("gemma-2")
    kept, drops, _ = run_rows(tok, ROWS[:1], auto_insert=True)
    text = "".join(tok.convert_ids_to_tokens(kept[0]["chosen_input_ids"]))
    assert drops == [] and text.startswith("<bos><start_of_turn>user\nWhat")


def test_qwen3_reasoning_is_scored_as_the_template_writes_it_for_the_last_reply():
    tok = family_tokenizer("qwen3")
    kept = run_each(tok, ROWS, auto_insert=False)
    scored = lambda row, side: "".join(
        tok.convert_ids_to_tokens(
            [t for t, label in zip(row[f"{side}_input_ids"], row[f"{side}_labels"]) if label >= 0]
        )
    )
    # Rendered alone, the reply would be history to the template, its reasoning stripped: "...assistant\nIt is 4.".
    assert scored(kept[3], "chosen") == (
        "<|im_start|>assistant\n<think>\nAdd two and two.\n</think>\n\nIt is 4.<|im_end|>\n<|im_end|>"
    )
    # Without reasoning the template writes an empty <think> block into the last reply: scored too, as Qwen3 does.
    assert scored(kept[1], "chosen") == "<|im_start|>assistant\n<think>\n\n</think>\n\ngood<|im_end|>\n<|im_end|>"
    # An earlier reply's reasoning is stripped by the template: it is prompt, unscored.
    prompt = "".join(tok.convert_ids_to_tokens(kept[4]["chosen_input_ids"][: kept[4]["prompt_length"]]))
    assert "old" not in prompt and prompt.endswith(
        "<|im_start|>assistant\n1<|im_end|>\n<|im_start|>user\nAgain?<|im_end|>\n"
    )


def test_user_turns_of_a_continued_prompt_are_prompt_not_reply():
    """A prompt message list continued by the same turns in chosen and rejected: those turns are prompt."""
    tok = family_tokenizer("llama-3")
    rendered = apply_chat_template(ROWS[2], tok, auto_insert_empty_system_msg=False)
    assert rendered["chosen"] == "<|start_header_id|>assistant<|end_header_id|>\n\nDay 1: the Forum.<|eot_id|>"
    assert rendered["prompt"].endswith("<|start_header_id|>user<|end_header_id|>\n\nRome<|eot_id|>")


@pytest.mark.parametrize("family", ["llama-3.1", "qwen2.5"])
def test_a_default_system_block_is_prompt_and_the_generation_prompt_holds_it_once(family):
    """Llama-3.1's date block and Qwen2.5's default system prompt: in the prompt, not in any reply; the generation
    prompt is the template's own (not a second system block from a reply rendered alone)."""
    tok = family_tokenizer(family)
    block = "Cutting Knowledge Date" if family == "llama-3.1" else "You are Qwen"
    rendered = apply_chat_template(ROWS[0], tok, auto_insert_empty_system_msg=False)
    assert block in rendered["prompt"] and block not in rendered["chosen"]
    turns = [USER("What is 2+2?")]
    official = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert generation_prompt_ids(turns, tok, False) == tok(official, add_special_tokens=False)["input_ids"]


def test_qwen3s_generation_prompt_leaves_the_reasoning_to_the_model():
    tok = family_tokenizer("qwen3")
    assert response_header(tok) == "<|im_start|>assistant\n"


def test_llama32_writes_todays_date_into_the_prompt():
    import datetime

    rendered = apply_chat_template(ROWS[0], family_tokenizer("llama-3.2"))
    assert f"Today Date: {datetime.date.today().strftime('%d %b %Y')}\n\n<|eot_id|>" in rendered["prompt"]


def test_mistral_v03_folds_a_system_turn_into_the_last_user_turn_so_such_rows_are_dropped_with_the_reason():
    """Mistral-v0.3's template writes the system text into the last user turn: in a prompt that is the turn before
    the reply, in the whole conversation none (it is no longer last), so the prompt does not start the conversation."""
    tok = family_tokenizer("mistral-v0.3")
    rows = [ROWS[0], pair([SYSTEM("Be brief."), USER("Hi")], "Hello", "Go")]
    kept, drops, _ = run_rows(tok, rows, auto_insert=False)
    assert len(kept) == 1 and [(d.index, d.reason) for d in drops] == [
        (
            1,
            "the chat template renders the prompt differently from the start of the whole conversation, so the reply"
            " cannot be told from it",
        )
    ]
    # The empty system turn the rule would insert has the same effect on every row: refused, saying which key.
    with pytest.raises(TemplateError, match="without the empty system turn simpo inserts it is: set auto_insert_empty"):
        apply_chat_template(ROWS[0], tok)


def test_the_reference_templates_render_as_the_reference_did():
    """Llama-3 (the tiny model's own), the Gemma-2 config's, simpo's Mistral and Zephyr templates: every tiny row and
    multi-turn row gives the reference's strings (the prompt without a generation prompt; each reply rendered alone,
    its BOS string stripped)."""
    zephyr = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    from conftest import char_tokenizer

    tokenizers = [AutoTokenizer.from_pretrained(TINY_MODEL)]
    for template, specials, bos, eos in [
        (GEMMA, ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>"),
        (MISTRAL_CHAT_TEMPLATE, ["<s>", "</s>"], "<s>", "</s>"),
        (zephyr, ["</s>"], None, "</s>"),
        (LLAMA3, ["<|begin_of_text|>", "<|eot_id|>"], "<|begin_of_text|>", "<|eot_id|>"),
    ]:
        tokenizers.append(char_tokenizer(specials, bos=bos, eos=eos, template=template))
    with open(os.path.join(TINY_DATA, "train.jsonl")) as f:
        rows = [json.loads(line) for line in f][:200]
    rows += [r for r in ROWS if not isinstance(r["prompt"], list)]
    for tok in tokenizers:
        bos = tok.bos_token or "\0"
        for row in rows:
            turns = [SYSTEM("")] + row["chosen"][:-1] if "system" in tok.chat_template else row["chosen"][:-1]
            assert apply_chat_template(row, tok) == {
                "prompt": tok.apply_chat_template(turns, tokenize=False),
                "chosen": tok.apply_chat_template(row["chosen"][-1:], tokenize=False).removeprefix(bos),
                "rejected": tok.apply_chat_template(row["rejected"][-1:], tokenize=False).removeprefix(bos),
            }


def test_a_zero_width_reply_is_an_empty_response():
    tok = family_tokenizer("llama-3")
    rows = [pair([USER("q")], "\u200b\u200b", "fine"), pair([USER("q")], "ok", "\ufeff \u2060"), ROWS[0]]
    kept, drops, _ = run_rows(tok, rows, auto_insert=False)
    assert len(kept) == 1 and [(d.index, d.reason) for d in drops] == [(0, "empty response"), (1, "empty response")]


def write_source(tmp_path, rows, name="prefs"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_a_row_whose_replies_continue_the_prompt_differently_is_refused_by_line(tmp_path):
    """chosen and rejected continue a prompt message list with different turns: the earlier turns would be scored
    as part of the reply (a user turn among them)."""
    differing = {
        "prompt": [USER("plan a trip")],
        "chosen": [ASSISTANT("Where?"), USER("Rome, chosen user turn"), ASSISTANT("Day 1")],
        "rejected": [ASSISTANT("Where?"), USER("Paris"), ASSISTANT("No")],
    }
    folder = write_source(tmp_path, [ROWS[0], ROWS[2], differing])
    with pytest.raises(DataError) as error:
        mix_datasets({str(folder): 1.0}, ["train"])
    assert str(error.value).startswith(
        f"{folder}/train.jsonl line 3: 'chosen' and 'rejected' continue the 'prompt' with different turns"
    )


TINY = os.path.join(REPO, "training_configs", "tiny-simpo-cpu.yaml")
QUIET = ["--report_to=none", "--do_eval=false", "--eval_strategy=no", "--eval_on_start=false", "--max_steps=1"]


def tiny_copy(tmp_path, template: str):
    """The tiny model with another chat_template.jinja."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(TINY_MODEL, model)
    (model / "chat_template.jinja").write_text(template)
    return model


# The command as its user runs it: a refusal is the message alone and exit status 2.
train = report_input_errors("simpo-train")(train_main)


def refused_with_family_template(capsys, tmp_path, family: str, rows: list[dict], pattern: str, *overrides) -> str:
    """simpo-train on the tiny model carrying `family`'s template, on `rows`: refused with `pattern`, nothing
    written."""
    model = tiny_copy(tmp_path, FAMILIES[family][0])
    folder = write_source(tmp_path, rows)
    out = tmp_path / "out"
    data = [f"--dataset_mixer={{{folder}: 1.0}}", "--dataset_splits=[train]", f"--output_dir={out}"]
    message = refused(
        capsys, train, [TINY, f"--model_name_or_path={model}", *data, *overrides, *QUIET], pattern.format(folder, model)
    )
    assert not out.exists()
    return message


def test_a_template_that_refuses_a_rows_system_turn_is_named_with_the_row_and_the_fix(tmp_path, capsys):
    message = refused_with_family_template(
        capsys,
        tmp_path,
        "gemma-2",
        [ROWS[0], pair([SYSTEM("Be brief."), USER("Hi")], "Hello", "Go")],
        r"^{}/train.jsonl line 2: the tokenizer's own chat template \({}\) raises: System role not supported\. Set"
        r" chat_template in the YAML .*gemma-2-9b-it-simpo.yaml",
    )
    assert "auto_insert_empty_system_msg" not in message  # the row's own system turn, not an inserted one


def test_roles_that_do_not_alternate_are_named_with_the_row(tmp_path, capsys):
    refused_with_family_template(
        capsys,
        tmp_path,
        "mistral-v0.2",
        [pair([SYSTEM("Be brief."), USER("Hi")], "Hello", "Go")],
        r"^{}/train.jsonl line 1: .*raises: Conversation roles must alternate",
        "--auto_insert_empty_system_msg=false",
    )


@pytest.mark.parametrize(
    "template, pattern",
    [
        (
            "{% for m in messages %}{{ m['content'] }}",
            r"^the YAML's chat_template fails with TemplateSyntaxError: .*"
            r" \(template line 1\)\. Fix it\.",
        ),
        (
            "{{ no_such_function(messages) }}",
            r"^\S+/train.jsonl line \d+: the YAML's chat_template"
            r" fails with UndefinedError: 'no_such_function' is undefined\. Set chat_template",
        ),
    ],
)
def test_a_broken_template_is_one_line_naming_it(tmp_path, capsys, template, pattern):
    refused(
        capsys,
        train,
        [TINY, f"--chat_template={template}", f"--output_dir={tmp_path / 'out'}", *QUIET],
        pattern,
    )
