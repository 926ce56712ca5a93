"""A note at the end of run_config.yaml (simpo/config/run_record.py, note_in_run_config): YAML comments, replaced on
the next note of the same title, so the file reads as the same settings and still launches the same run."""

import yaml

from simpo.config.run_record import RUN_CONFIG, note_in_run_config


def test_a_note_is_comments_that_leave_the_settings_as_they_were(tmp_path):
    path = tmp_path / RUN_CONFIG
    path.write_text("# Written by simpo\nbeta: 2.0\nprefix_sharing: auto\n")
    settings = yaml.safe_load(path.read_text())
    note_in_run_config(str(tmp_path), "start-up self-check", ["runs plain, full logits", "rejected x: by 0.5"])
    assert path.read_text().endswith(
        "prefix_sharing: auto\n# start-up self-check:\n#   runs plain, full logits\n#   rejected x: by 0.5\n"
    )
    note_in_run_config(str(tmp_path), "start-up self-check", ["runs prefix sharing"])  # a relaunch's own decision
    assert (
        path.read_text()
        == "# Written by simpo\nbeta: 2.0\nprefix_sharing: auto\n# start-up self-check:\n#   runs prefix sharing\n"
    )
    assert yaml.safe_load(path.read_text()) == settings


def test_no_note_without_a_run_config(tmp_path):
    note_in_run_config(str(tmp_path), "start-up self-check", ["runs plain"])
    assert list(tmp_path.iterdir()) == []
