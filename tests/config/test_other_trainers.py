"""Keys from TRL's CPOConfig, LLaMA-Factory and axolotl: refused with the key here and the value it would take
(simpo/config/other_trainers.py), the margin's translation checked against TRL's own loss."""

import os
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO
from helpers.refusals import refused

from simpo.config.parser import parse_args
from simpo.errors import ConfigError
from simpo.sft.recipe import SFT_ARGUMENTS
from simpo.train.config import SIMPO_ARGUMENTS
from simpo.train.loss import simpo_loss
from simpo.train.recipe import main as simpo_train

TINY = os.path.join(REPO, "training_configs", "tiny-simpo-cpu.yaml")  # beta: 2.0


def problems(tmp_path, *cli, arguments=SIMPO_ARGUMENTS) -> list[str]:
    with pytest.raises(ConfigError) as refusal:
        parse_args([*cli, f"--output_dir={tmp_path}"], arguments)
    return refusal.value.problems


def test_the_users_examples_are_refused_with_their_translation(capsys, tmp_path, monkeypatch):
    """The four of the issue, from the command line, as the user sees them (one error line each, no traceback)."""
    cli = [TINY, f"--output_dir={tmp_path}"]

    def train_main(argv):
        monkeypatch.setattr("sys.argv", ["simpo-train", *argv])
        simpo_train()

    message = refused(capsys, train_main, [*cli, "--simpo_gamma=0.5"], r"^Unknown config key 'simpo_gamma'")
    assert "gamma_beta_ratio = simpo_gamma / beta: use gamma_beta_ratio=0.25 (0.5 / 2, the beta your config" in message
    message = refused(capsys, train_main, [*cli, "--gamma=1.0"], r"^Unknown config key 'gamma'")
    assert "use gamma_beta_ratio=0.5 (1 / 2," in message
    message = refused(capsys, train_main, [*cli, "--cpo_alpha=0.0"], r"^Unknown config key 'cpo_alpha'")
    assert "use sft_weight=0 " in message and "lora_alpha" not in message
    message = refused(capsys, train_main, [*cli, "--loss_type=simpo"], r"^Bad value 'simpo' for 'loss_type'")
    assert "TRL's CPOConfig loss_type simpo is this package's sigmoid loss" in message
    assert "use loss_type=sigmoid" in message


@pytest.mark.parametrize(
    "cli, expected",
    [
        (["--simpo_gamma=1.25"], "use gamma_beta_ratio=0.625 (1.25 / 2, this run's default beta)"),
        (["--simpo_gamma=1.25", "--beta=2.5"], "use gamma_beta_ratio=0.5 (1.25 / 2.5, the beta your config sets)"),
        (["--simpo_gamma=1.25", "--pref_beta=10"], "use gamma_beta_ratio=0.125 (1.25 / 10, the pref_beta"),
        (["--simpo_gamma=1.25", "--rl_beta=5"], "use gamma_beta_ratio=0.25 (1.25 / 5, the rl_beta"),
        (["--pref_ftx=0.1"], "use sft_weight=0.1"),
        (["--pref_beta=2.5"], "use beta=2.5"),
        (["--rl_beta=2.5"], "use beta=2.5"),
        (["--dpo_label_smoothing=0.1"], "use label_smoothing=0.1"),
        (["--pref_loss=simpo"], "delete the key (loss_type: sigmoid, the default, is that loss)"),
        (["--pref_loss=orpo"], "'orpo' is another loss"),
        (["--rl=simpo"], "delete the key: this recipe trains SimPO"),
        (["--stage=dpo"], "each stage is its own command here"),
        (["--finetuning_type=lora"], "use use_peft=true"),
        (["--adapter=qlora"], "use use_peft=true and load_in_4bit=true"),
        (["--lora_rank=8"], "use lora_r=8"),
        (["--lora_target=q_proj,v_proj"], "use lora_target_modules=[q_proj,v_proj]"),
        (["--cutoff_len=2048"], "use max_length=2048"),
        (["--sequence_len=2048"], "use max_length=2048"),
        (["--max_completion_length=512"], "set those"),
        (["--base_model=org/model"], "use model_name_or_path=org/model"),
        (["--micro_batch_size=4"], "use per_device_train_batch_size=4"),
        (["--num_epochs=2"], "use num_train_epochs=2"),
        (["--lr_scheduler=cosine"], "use lr_scheduler_type=cosine"),
        (["--template=llama3"], "the tokenizer's own chat template is used"),
        (["--dataset=my_prefs"], "dataset_mixer: {path: 1.0}"),
    ],
)
def test_each_key_names_the_key_here_and_its_value(tmp_path, cli, expected):
    said = problems(tmp_path, *cli)
    key = cli[0][2:].split("=")[0]
    ours = [p for p in said if p.startswith(f"Unknown config key '{key}'")]
    assert len(ours) == 1 and expected in ours[0], said


def test_a_command_without_the_key_here_gets_no_translation(tmp_path):
    """sft_weight is no key of simpo-sft: there cpo_alpha is an unknown key like any other."""
    said = problems(tmp_path, "--cpo_alpha=0.0", arguments=SFT_ARGUMENTS)
    assert said[0].startswith("Unknown config key 'cpo_alpha'") and "sft_weight" not in said[0]


def test_following_the_translation_gives_trls_simpo_loss(tmp_path):
    """TRL's CPOTrainer.cpo_loss with loss_type simpo (its own code) equals this package's loss at the translated
    gamma_beta_ratio, label smoothing included."""
    from trl.experimental.cpo import CPOTrainer

    beta, simpo_gamma, smoothing = 2.5, 1.4, 0.1
    said = problems(tmp_path, f"--beta={beta}", f"--simpo_gamma={simpo_gamma}", f"--label_smoothing={smoothing}")
    ratio = re.search(r"use gamma_beta_ratio=([0-9.e-]+)", said[0]).group(1)
    _, _, config = parse_args(
        [f"--beta={beta}", f"--gamma_beta_ratio={ratio}", f"--label_smoothing={smoothing}", f"--output_dir={tmp_path}"],
        SIMPO_ARGUMENTS,
    )
    trl = object.__new__(CPOTrainer)  # only cpo_loss's attributes: no model, no data
    trl.__dict__.update(
        alpha=0.0,
        loss_type="simpo",
        beta=beta,
        simpo_gamma=simpo_gamma,
        label_smoothing=smoothing,
        accelerator=SimpleNamespace(device="cpu"),
    )
    generator = torch.Generator().manual_seed(0)
    chosen, rejected = -torch.rand(64, generator=generator) * 3, -torch.rand(64, generator=generator) * 3
    theirs = CPOTrainer.cpo_loss(trl, chosen.double(), rejected.double())[0]
    ours = simpo_loss(chosen.double(), rejected.double(), config.beta, config.gamma, "sigmoid", config.label_smoothing)
    torch.testing.assert_close(ours, theirs)


def test_a_chat_template_name_is_refused_as_no_jinja_template(tmp_path):
    """axolotl's `chat_template: chatml` names a template; read as Jinja it renders constant text, which used to
    end in 'every pair dropped (empty response)'."""
    said = problems(tmp_path, "--chat_template=chatml")
    assert said == [
        "chat_template='chatml' is no Jinja template (a template's name, as axolotl's chat_template is?): here"
        " chat_template is the template's Jinja text; delete the key to use the tokenizer's own template."
    ]
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert parse_args([f"--chat_template={template}", f"--output_dir={tmp_path}"], SIMPO_ARGUMENTS)[1].chat_template


def test_the_docs_data_conversions_give_rows_this_package_trains_on():
    """docs/configuration.md's LLaMA-Factory (sharegpt) converter, run as written; TRL's conversational rows are
    read as they are and its plain-string rows are refused, as the page says."""
    from simpo.data.validation import row_problem

    doc = os.path.join(REPO, "docs", "configuration.md")
    section = open(doc).read().split("## Coming from TRL, LLaMA-Factory or axolotl")[1].split("\n## ")[0]
    namespace = {}
    exec(compile(re.search(r"```python\n(.*?)\n```", section, flags=re.S).group(1), doc, "exec"), namespace)
    sharegpt = {  # a ranking entry's row, LLaMA-Factory's default tags
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Name a colour."},
            {"from": "gpt", "value": "Blue."},
            {"from": "human", "value": "Another?"},
        ],
        "chosen": {"from": "gpt", "value": "Red."},
        "rejected": {"from": "gpt", "value": "No."},
    }
    row = namespace["from_sharegpt"](sharegpt)
    assert row_problem(row) is None
    assert [m["role"] for m in row["chosen"]] == ["system", "user", "assistant", "user", "assistant"]
    assert row["chosen"][-1]["content"] == "Red." and row["rejected"][-1]["content"] == "No."
    user, reply = {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}
    no = {"role": "assistant", "content": "No."}
    assert row_problem({"prompt": [user], "chosen": [reply], "rejected": [no]}) is None  # TRL conversational
    assert "expected a non-empty list" in row_problem(
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."}
    )
