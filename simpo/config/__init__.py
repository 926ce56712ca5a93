"""A run's settings: the strict YAML + `--key=value` parser (parser.py), the argument groups every recipe shares
(arguments.py: the model, the data, the resume key), and the record of what a run was launched with
(run_record.py: OUTPUT_DIR/run_config.yaml), and what other SimPO trainers' keys are here (other_trainers.py).

What changes here: how settings are read, cast, checked and recorded. The recipes' own keys live beside their
recipes (simpo/train/config.py, simpo/sft/config.py, simpo/pipeline/config.py)."""
