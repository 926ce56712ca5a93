"""How a test sees a command's refusal as its user does: exit status 2 and `prog: error: <message>` ending stderr, with
no traceback: argparse's form (after the usage) or simpo's (with the SIMPO_TRACEBACK hint, simpo/run/commands.py)."""

import re

import pytest

ERROR_LINE = re.compile(
    r"^(?P<prog>[\w-]+)(?: \[rank \d+\])?: error: (?P<message>.*?)"
    r"(?:\n\(set SIMPO_TRACEBACK=1 for the traceback\))?\n\Z",
    re.DOTALL | re.MULTILINE,
)


def refused(capsys, main, argv: list[str], pattern: str) -> str:
    """Run `main(argv)`, check that it exits with status 2 printing only the error line, and that the message
    matches `pattern` (re.search, as pytest.raises(match=) does, so `^` anchors at the message's start). Returns the
    message."""
    capsys.readouterr()  # what ran before is not this command's output
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    printed = ERROR_LINE.search(err)
    assert printed, f"no error line ending stderr:\n{err[-2000:]}"
    assert "Traceback" not in err
    message = printed["message"]
    assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    return message
