"""CI must run exactly the two set-up commands the README gives."""

import os
import re

from conftest import REPO


def test_ci_runs_the_readme_commands_verbatim():
    readme = open(os.path.join(REPO, "README.md")).read()
    section = readme.split("## Set-up: two commands")[1].split("\n## ")[0]
    commands = re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)
    assert len(commands) == 2
    ci_lines = open(os.path.join(REPO, ".ci", "run")).read().splitlines()
    for command in commands:
        assert command in ci_lines
