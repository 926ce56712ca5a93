import dataclasses
import logging
import textwrap

import pytest
import yaml
from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SchedulerType

from simpo.config.parser import LEGACY_KEYS, REMOVED_KEYS, parse_args
from simpo.errors import ConfigError
from simpo.train.config import SIMPO_ARGUMENTS
from simpo.train.recipe import DESCRIPTION, train_main


@pytest.fixture
def run(tmp_path):
    """run(*cli, yaml=None) -> (model_args, data_args, simpo_config), always with an output_dir in tmp_path."""

    def _run(*cli, yaml=None):
        argv = [*cli, f"--output_dir={tmp_path / 'out'}"]
        if yaml is not None:
            path = tmp_path / "config.yaml"
            path.write_text(textwrap.dedent(yaml))
            argv.insert(0, str(path))
        return parse_args(argv, SIMPO_ARGUMENTS)

    return _run


def test_cli_casts_every_field_kind(run, tmp_path):
    model, data, cfg = run(
        "--model_name_or_path=gpt2",  # str
        "--max_length=256",  # int
        "--learning_rate=3e-7",  # float without a dot
        "--use_peft=yes",  # bool words
        "--disable_dropout=False",
        "--tokenizer_name_or_path=None",  # str | None
        "--preprocessing_num_workers=null",  # int | None
        "--loss_type=hinge",  # Literal
        "--torch_dtype=bfloat16",  # Literal | None
        "--lora_target_modules=q_proj, v_proj",  # list[str], comma form
        "--dataset_splits=[train_prefs, test_prefs]",  # list[str], flow form
        '--dataset_mixer={"org/a": 0.5, local: 1}',  # dict[str, float]
        '--model_init_kwargs={"device_map": "auto", "n": [1, 2]}',  # dict[str, Any]
        "--eval_strategy=epoch",  # IntervalStrategy | str
        "--lr_scheduler_type=cosine",  # SchedulerType | str
        '--lr_scheduler_kwargs={"min_lr": 1e-6}',  # dict | str | None
        "--report_to=[tensorboard]",  # None | str | list[str]
        "--warmup_steps=0.1",  # float
    )
    assert model.model_name_or_path == "gpt2"
    assert cfg.max_length == 256 and type(cfg.max_length) is int
    assert cfg.learning_rate == 3e-7 and type(cfg.learning_rate) is float
    assert model.use_peft is True and cfg.disable_dropout is False
    assert model.tokenizer_name_or_path is None and data.preprocessing_num_workers is None
    assert cfg.loss_type == "hinge" and model.torch_dtype == "bfloat16"
    assert model.lora_target_modules == ["q_proj", "v_proj"]
    assert data.dataset_splits == ["train_prefs", "test_prefs"]
    assert data.dataset_mixer == {"org/a": 0.5, "local": 1.0} and type(data.dataset_mixer["local"]) is float
    assert cfg.model_init_kwargs == {"device_map": "auto", "n": [1, 2]}
    assert cfg.eval_strategy is IntervalStrategy.EPOCH
    assert cfg.lr_scheduler_type is SchedulerType.COSINE
    assert cfg.lr_scheduler_kwargs == {"min_lr": 1e-6}
    assert cfg.report_to == ["tensorboard"]
    assert cfg.warmup_steps == 0.1
    assert cfg.output_dir == str(tmp_path / "out")


def test_report_to_forms(run):
    assert run("--report_to=tensorboard,wandb")[2].report_to == ["tensorboard", "wandb"]
    assert run("--report_to", "tensorboard")[2].report_to == ["tensorboard"]
    # "none" is transformers' word for no integrations; a None would become [None].
    assert run("--report_to=none")[2].report_to == []
    assert run(yaml="report_to: null\n")[2].report_to == []


def test_space_separated_values_and_bare_bool_flags(run):
    model, _, cfg = run("--beta", "3", "--use_peft", "--label_pad_token_id", "-100", "--trust_remote_code")
    assert cfg.beta == 3.0 and type(cfg.beta) is float
    assert model.use_peft is True and model.trust_remote_code is True
    assert cfg.label_pad_token_id == -100
    # A bare flag also sets a union holding bool: transformers turns True into "all".
    assert run("--include_num_input_tokens_seen")[2].include_num_input_tokens_seen == "all"


def test_bare_flag_on_non_bool_field_needs_a_value(run):
    with pytest.raises(ConfigError, match=r"'--beta' needs a value \(command line\): expected float"):
        run("--beta")


def test_yaml_values_are_coerced(run):
    # PyYAML reads 3e-7 (no dot) as a string; the parser must still give a float.
    assert yaml.safe_load("x: 3e-7")["x"] == "3e-7"
    model, data, cfg = run(
        yaml="""
        model_name_or_path: org/model
        learning_rate: 3e-7
        max_length: 1024
        use_peft: true
        torch_dtype: null
        dataset_mixer:
          org/prefs: 1
          local: 0.25
        dataset_splits: [train, test]
        report_to: [tensorboard]
        eval_strategy: steps
        """
    )
    assert model.model_name_or_path == "org/model"
    assert cfg.learning_rate == 3e-7 and type(cfg.learning_rate) is float
    assert cfg.max_length == 1024 and model.use_peft is True and model.torch_dtype is None
    assert data.dataset_mixer == {"org/prefs": 1.0, "local": 0.25}
    assert data.dataset_splits == ["train", "test"]
    assert cfg.report_to == ["tensorboard"] and cfg.eval_strategy is IntervalStrategy.STEPS


def test_cli_overrides_yaml(run):
    model, _, cfg = run("--beta=10", "--use_peft=false", yaml="beta: 2.5\nuse_peft: true\ngamma_beta_ratio: 0.5\n")
    assert cfg.beta == 10.0 and model.use_peft is False
    assert cfg.gamma_beta_ratio == 0.5  # untouched YAML value stays


def test_defaults_stay_when_not_given(run):
    model, data, cfg = run()
    assert model.lora_r == 16 and data.dataset_splits == ["train", "test"] and cfg.beta == 2.0
    assert cfg.remove_unused_columns is False


def test_unknown_key_suggests_closest(run, tmp_path):
    with pytest.raises(ConfigError) as e:
        run("--learning_rat=1e-6")
    assert str(e.value) == "Unknown config key 'learning_rat' (command line). Did you mean 'learning_rate'?"
    with pytest.raises(ConfigError) as e:
        run(yaml="betta: 2\n")
    assert str(e.value) == f"Unknown config key 'betta' ({tmp_path / 'config.yaml'}). Did you mean 'beta'?"


def test_unknown_key_without_close_match(run):
    with pytest.raises(ConfigError) as e:
        run("--zzzzqqq=1")
    assert str(e.value) == "Unknown config key 'zzzzqqq' (command line)."


def test_duplicate_cli_key(run):
    with pytest.raises(ConfigError, match="Key 'beta' given twice on the command line"):
        run("--beta=1", "--beta", "2")


def test_duplicate_yaml_keys_top_level_and_nested(run, tmp_path):
    with pytest.raises(ConfigError, match=r"Key 'beta' appears twice in .*config\.yaml \(line 3\)"):
        run(yaml="beta: 1\nmax_length: 10\nbeta: 2\n")
    with pytest.raises(ConfigError, match=r"Key 'a' appears twice in .*config\.yaml \(line 4\)"):
        run(yaml="dataset_mixer:\n  a: 0.5\n  b: 0.1\n  a: 1\n")


def test_bad_bool(run):
    with pytest.raises(ConfigError) as e:
        run("--use_peft=maybe")
    msg = str(e.value)
    assert "'maybe'" in msg and "'use_peft'" in msg and "(command line)" in msg and "expected bool" in msg
    assert "true/false, yes/no or 1/0" in msg


def test_int_must_be_integral_and_not_bool(run, tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"Bad value '1\.5' for 'max_length' \(command line\): expected int; "
        r"not a whole number",
    ):
        run("--max_length=1.5")
    with pytest.raises(ConfigError, match="a boolean is not accepted as int"):
        run(yaml="max_length: true\n")
    assert run("--max_length=1e3")[2].max_length == 1000


def test_bad_value_in_yaml_names_the_file(run, tmp_path):
    with pytest.raises(ConfigError) as e:
        run(yaml="lora_r: 2.5\n")
    assert str(e.value).startswith(f"Bad value 2.5 for 'lora_r' ({tmp_path / 'config.yaml'}): expected int")


def test_bad_literal_lists_allowed_values(run):
    with pytest.raises(ConfigError) as e:
        run("--loss_type=ipo")
    assert "Bad value 'ipo' for 'loss_type' (command line)" in str(e.value)
    assert "must be one of 'sigmoid', 'hinge'" in str(e.value)


def test_none_only_where_the_type_admits_it(run):
    with pytest.raises(ConfigError, match="None is not allowed here"):
        run(yaml="max_length: null\n")
    with pytest.raises(ConfigError, match="not a whole number"):
        run("--max_length=None")


def test_bad_mapping_value(run):
    with pytest.raises(ConfigError, match=r"'dataset_mixer' \(command line\): expected dict\[str, float\] \| None"):
        run("--dataset_mixer={a: lots}")


def test_legacy_keys_are_mapped_with_one_warning_each(run, caplog):
    caplog.set_level(logging.WARNING, logger="simpo.config.parser")
    _, _, cfg = run(
        yaml="""
        warmup_ratio: 0.1
        evaluation_strategy: epoch
        no_cuda: true
        max_seq_length: 256
        """
    )
    assert cfg.warmup_steps == 0.1 and cfg.eval_strategy is IntervalStrategy.EPOCH and cfg.use_cpu is True
    assert cfg.max_length == 256
    warned = [r.getMessage() for r in caplog.records if r.name == "simpo.config.parser"]
    assert len(warned) == len(LEGACY_KEYS)
    for key in LEGACY_KEYS:
        assert sum(f"Config key '{key}'" in m for m in warned) == 1
    assert any("read as warmup_steps=0.1" in m for m in warned)


@pytest.mark.parametrize("key", sorted(REMOVED_KEYS))
def test_keys_that_would_do_nothing_are_refused_naming_what_to_use(run, key):
    with pytest.raises(ConfigError) as error:
        run(yaml=f"{key}: left\n")
    assert f"Config key '{key}' (" in str(error.value) and "is not used: " in str(error.value)
    assert REMOVED_KEYS[key] in str(error.value)


def test_legacy_key_on_the_command_line(run, caplog):
    _, _, cfg = run("--no_cuda", "--warmup_ratio", "0.05", yaml="warmup_steps: 10\n")
    assert cfg.use_cpu is True and cfg.warmup_steps == 0.05  # the command line still overrides the file
    assert "Config key 'no_cuda' (command line) is obsolete and read as use_cpu" in caplog.text


def test_legacy_keys_are_really_gone_from_training_arguments():
    from simpo.sft.config import SFTRunConfig
    from simpo.train.config import SimPOConfig

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert not fields & (set(LEGACY_KEYS) | set(REMOVED_KEYS))
    for recipe in (SimPOConfig, SFTRunConfig):  # each old key has a key of today in both recipes
        assert {new for new, _ in LEGACY_KEYS.values()} <= {f.name for f in dataclasses.fields(recipe)}


def test_warmup_ratio_and_warmup_steps_conflict(run):
    with pytest.raises(ConfigError, match="Both 'warmup_ratio' and 'warmup_steps' are set"):
        run(yaml="warmup_ratio: 0.1\nwarmup_steps: 100\n")
    with pytest.raises(ConfigError, match=r"Both 'warmup_ratio' and 'warmup_steps' are set \(command line\)"):
        run("--warmup_ratio=0.1", "--warmup_steps=100")
    with pytest.raises(ConfigError, match="warmup_ratio=1.0 .* must be below 1"):
        run(yaml="warmup_ratio: 1.0\n")


def test_key_shared_by_two_dataclasses_goes_to_both(tmp_path):
    @dataclasses.dataclass
    class A:
        seed: int = 0

    @dataclasses.dataclass
    class B:
        seed: int = 1
        name: str = "b"

    a, b = parse_args(["--seed=7", f"--name={tmp_path}"], dataclass_types=(A, B))
    assert a.seed == 7 and b.seed == 7 and b.name == str(tmp_path)


def test_first_argument_must_be_yaml(tmp_path):
    with pytest.raises(ConfigError, match="must be a .yaml/.yml file, got 'config.json'"):
        parse_args(["config.json", f"--output_dir={tmp_path}"], SIMPO_ARGUMENTS)


def test_dataclass_post_init_still_runs(run):
    with pytest.raises(ValueError, match="load_in_8bit and load_in_4bit are both true"):
        run("--load_in_8bit", "--load_in_4bit")


def test_help_lists_every_group_and_key(capsys):
    with pytest.raises(SystemExit) as done:
        train_main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(DESCRIPTION + "\n\nusage: simpo-train CONFIG.yaml")
    assert "ModelArguments:" in text and "SimPOConfig:" in text
    assert "--gamma_beta_ratio (float, default 0.25) Target margin gamma = beta * this." in text
    # A default from a factory shows its value, not a placeholder.
    assert "--dataset_splits (list[str], default ['train', 'test'])" in text


@pytest.mark.parametrize("command", ["simpo-generate", "simpo-annotate", "simpo-binarise"])
def test_pipeline_help_names_its_command_and_only_the_keys_it_takes(command, capsys):
    from simpo.pipeline.config import parse_pipeline_args

    with pytest.raises(SystemExit) as done:
        parse_pipeline_args(["--help"], command, "What it does.")
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"What it does.\n\nusage: {command} CONFIG.yaml")
    assert "--model_name_or_path" in text and "--seeds (list[int], default [13, 21, 42, 79, 100])" in text
    for refused in ("--lora_r", "--load_in_4bit", "--truncation_mode"):  # refused by the pipeline, so not offered
        assert refused not in text


@pytest.mark.parametrize(
    "text,expected",
    [
        ("beta: 2.0\nmodel_init_kwargs:\n\tfoo: 1\n", r"line 3, column 1\): .*'\\t'.*; YAML indents with spaces"),
        (
            "beta: 2.0\ndataset_splits: [train, test\nmax_length: 64\n",
            r"line 2, column 17\): while parsing a flow"
            r" sequence expected ',' or '\]'.*; close the \[ list with \]",
        ),
        (
            "beta: !!python/object/apply:os.system [echo hi]\n",
            r"line 1, column 7\): could not determine a constructor"
            r" for the tag 'tag:yaml.org,2002:python/object/apply:os.system'; simpo reads plain YAML"
            r" .*remove the !! tag",
        ),
        ("[1, 2]\n", r"must hold a mapping of key: value \(it holds a list\)"),
    ],
    ids=["tab", "unclosed-list", "python-tag", "not-a-mapping"],
)
def test_a_yaml_file_simpo_cannot_read_is_one_line_naming_the_file_line_and_fix(tmp_path, capsys, text, expected):
    from refusals import refused

    from simpo.train.recipe import main

    path = tmp_path / "config.yaml"
    path.write_text(text)
    message = refused(capsys, lambda argv: main_with_argv(main, argv), [str(path)], expected)
    assert message.startswith(str(path)) and "\n" not in message


def main_with_argv(main, argv):
    import sys

    saved, sys.argv = sys.argv, ["simpo-train", *argv]
    try:
        main()
    finally:
        sys.argv = saved


def test_a_missing_config_file_is_named_with_the_nearest_one(capsys):
    from refusals import refused

    from simpo.train.recipe import main

    message = refused(
        capsys, lambda argv: main_with_argv(main, argv), ["training_configs/tiny-simpo-cpuu.yaml"], "does not exist"
    )
    assert message == (
        "Config file training_configs/tiny-simpo-cpuu.yaml does not exist. Did you mean"
        " training_configs/tiny-simpo-cpu.yaml?"
    )


def test_a_merge_key_brings_in_an_anchor_and_the_mappings_own_keys_win(run):
    _, _, cfg = run(
        yaml="""\
        model_init_kwargs:
          <<: {max_position_embeddings: 64, rope_theta: 500.0}
          rope_theta: 10000.0
        """
    )
    assert cfg.model_init_kwargs == {"max_position_embeddings": 64, "rope_theta": 10000.0}


def test_a_key_given_twice_beside_a_merge_is_still_refused(run):
    with pytest.raises(ConfigError, match=r"Key 'beta' appears twice in .*config.yaml \(line 4\)"):
        run(yaml="model_init_kwargs:\n  <<: {a: 1}\nbeta: 2.0\nbeta: 3.0\n")


def test_every_bad_key_and_value_of_a_config_is_named_in_one_run(run):
    """Unknown keys, bad values and the recipe's own checks (SimPO's loss keys, the layout keys, the training
    numbers), from the file and the command line: all in one error, one problem per line."""
    with pytest.raises(ConfigError) as refused_config:
        run("--lr=1e-6", "--beta=-1", "--padding_free=true", "--prefix_sharing=false", yaml="max_lenght: 64\n")
    problems = refused_config.value.problems
    assert len(problems) == 2 and str(refused_config.value) == "\n".join(problems)
    assert problems[0].startswith("Unknown config key 'max_lenght'") and "Did you mean 'max_length'?" in problems[0]
    assert problems[1].startswith("Unknown config key 'lr' (command line).")

    with pytest.raises(ConfigError) as refused_values:
        run("--beta=-1", "--padding_free=true", "--prefix_sharing=false", "--gradient_accumulation_steps=0")
    assert refused_values.value.problems == [
        "gradient_accumulation_steps must be at least 1 (got 0).",
        "beta must be positive (got -1.0); the paper uses 2 to 10.",
        "padding_free packs prefix-shared pairs: it needs prefix_sharing true or auto.",
    ]


def test_a_plain_word_for_a_mapping_key_is_shown_as_the_mapping_it_should_be(run, tmp_path):
    """`--dataset_mixer=data/mine` (a source without its fraction) names the form it takes: {data/mine: 1.0}."""
    with pytest.raises(ConfigError) as refusal:
        run("--dataset_mixer=data/mine")
    (problem,) = refusal.value.problems
    assert problem.startswith("Bad value 'data/mine' for 'dataset_mixer' (command line)") and "not a mapping" in problem
    assert "dataset_mixer: {data/mine: 1.0} in YAML, --dataset_mixer='{data/mine: 1.0}' on the command line" in problem
    _, data, _ = run("--dataset_mixer={data/mine: 1.0}")  # the form shown is read as the mapping it says
    assert data.dataset_mixer == {"data/mine": 1.0}
    with pytest.raises(ConfigError, match=r"model_init_kwargs: \{abc: VALUE\}"):
        run("--model_init_kwargs=abc")


@pytest.mark.parametrize("written,read", [("true", "true"), ("false", "false"), ("checkpoint-4", "checkpoint-4")])
def test_resume_from_checkpoint_true_in_a_yaml_reads_as_on_the_command_line(run, written, read):
    """YAML reads `true` as a boolean, the command line as a word: both are transformers' idiom for the newest
    checkpoint (simpo/run/resume.py), not a bad value."""
    _, _, from_yaml = run(yaml=f"resume_from_checkpoint: {written}\n")
    _, _, from_cli = run(f"--resume_from_checkpoint={written}")
    assert from_yaml.resume_from_checkpoint == from_cli.resume_from_checkpoint == read
