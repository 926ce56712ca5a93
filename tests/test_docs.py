"""The README is a short front door with a table of contents; the rest lives in docs/, every page reachable from the
README, and no relative link (file or #anchor) points nowhere."""

import os
import re

from conftest import REPO

README = os.path.join(REPO, "README.md")
DOCS = os.path.join(REPO, "docs")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def prose_lines(text):
    """The lines outside fenced code blocks (``` fences, also indented in list items), code spans removed."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield re.sub(r"`[^`]*`", "", line)


def headings(text, level=None):
    """(level, title) of every Markdown heading outside code blocks."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"(#{1,6}) +(.*?) *#* *$", line)
        if not fenced and match and (level is None or len(match.group(1)) == level):
            yield len(match.group(1)), match.group(2)


def slug(title):
    """GitHub's anchor for a heading: link markup and code ticks dropped, lower case, punctuation other than - and _
    removed, spaces to hyphens."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title).replace("`", "")
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(text):
    seen, out = {}, set()
    for _, title in headings(text):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def markdown_files():
    files = [README]
    for root, _, names in os.walk(DOCS):
        files += [os.path.join(root, name) for name in sorted(names) if name.endswith(".md")]
    return files


def links(path):
    return [target for line in prose_lines(read(path)) for target in LINK.findall(line)]


def test_readme_is_at_most_300_lines():
    assert len(read(README).splitlines()) <= 300


def test_docs_exist():
    assert os.path.isdir(DOCS) and len(markdown_files()) > 1


def test_every_relative_link_resolves_to_a_file_and_heading():
    broken = []
    for path in markdown_files():
        for target in links(path):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
            where = f"{os.path.relpath(path, REPO)} -> {target}"
            if not os.path.exists(dest):
                broken.append(f"{where}: no such file")
            elif anchor and (not dest.endswith(".md") or anchor not in anchors(read(dest))):
                broken.append(f"{where}: no heading with that anchor")
    assert broken == []


def test_every_docs_file_is_linked_from_the_readme():
    linked = {os.path.normpath(os.path.join(REPO, target.partition("#")[0])) for target in links(README)}
    pages = {os.path.normpath(os.path.join(root, name)) for root, _, names in os.walk(DOCS) for name in names}
    assert sorted(os.path.relpath(page, REPO) for page in pages - linked) == []


def test_readme_table_of_contents_lists_every_section():
    text = read(README)
    sections = [title for _, title in headings(text, level=2)]
    toc_title = next(title for title in sections if title.lower() in ("contents", "table of contents"))
    toc = text.split(f"\n## {toc_title}\n")[1].split("\n## ")[0]
    listed = [target[1:] for line in prose_lines(toc) for target in LINK.findall(line) if target.startswith("#")]
    assert listed == [slug(title) for title in sections if title != toc_title]


def test_docs_name_no_path_that_does_not_exist():
    """Every `simpo/...`, `tests/...`, `scripts/...`, `benchmarks/...` or `docs/...` path the README and docs name is in
    the repository (a module moved or renamed leaves no stale pointer behind)."""
    missing = []
    for path in markdown_files():
        for line in read(path).splitlines():
            for named in re.findall(r"`((?:simpo|tests|scripts|benchmarks|docs|training_configs)/[\w./-]+?)`", line):
                target = named.split("::")[0].rstrip("/")
                if not os.path.exists(os.path.join(REPO, target)) and "*" not in target and "<" not in target:
                    missing.append(f"{os.path.relpath(path, REPO)}: {named}")
    assert missing == []


def test_architecture_page_names_every_module():
    """Each room (`simpo/<room>/`) and, in its row, each of its modules (`name.py`) is on docs/architecture.md."""
    text = read(os.path.join(DOCS, "architecture.md"))
    simpo = os.path.join(REPO, "simpo")
    unnamed = []
    for root, _, names in os.walk(simpo):
        room = os.path.relpath(root, simpo).split(os.sep)[0]
        if room == "__pycache__" or "__pycache__" in root:
            continue
        rows = [row for row in text.splitlines() if f"`simpo/{room}/`" in row or root == simpo]
        for name in sorted(n for n in names if n.endswith(".py") and n != "__init__.py"):
            if not any(f"`{name}`" in row for row in rows):
                unnamed.append(os.path.relpath(os.path.join(root, name), simpo))
    assert unnamed == []


def test_the_key_reference_is_what_the_config_dataclasses_say():
    """docs/configuration.md's key reference is written from the dataclasses (scripts/config_reference.py): a field
    added, removed or re-documented without rewriting it fails here."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "scripts/config_reference.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_key_reference_lists_every_field_of_every_command():
    import dataclasses
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "config_reference", os.path.join(REPO, "scripts", "config_reference.py")
    )
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    text = reference.reference()
    from simpo.config.arguments import DataArguments, ModelArguments
    from simpo.pipeline.config import OnPolicyArguments

    expected = [f.name for cls in (ModelArguments, DataArguments, OnPolicyArguments) for f in dataclasses.fields(cls)]
    expected += sorted(reference.declared_by(reference.SimPOConfig, reference.TrainingArguments))
    expected += ["activation_checkpointing", "liger_kernels", "allow_global_batch_change"]  # once missing from the docs
    assert [key for key in expected if f"| `{key}` |" not in text] == []


def commands(lines) -> list[str]:
    """Shell commands from lines, a trailing backslash continuing one onto the next; whitespace collapsed."""
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [" ".join(command.split()) for command in joined.splitlines() if command.strip()]


def test_the_tiny_pipeline_config_header_gives_the_docs_commands():
    """onpolicy_configs/tiny-cpu.yaml's header and docs/onpolicy-data.md's "On a laptop" give the same commands,
    the simpo-train line with --logging_steps=1 (the on-policy set trains 4 steps: logging every 5 logs nothing)."""
    header = [line[1:] for line in read(os.path.join(REPO, "onpolicy_configs", "tiny-cpu.yaml")).splitlines()]
    header = [line for line in header if line.startswith("   ")]  # the indented command lines of the comment
    section = read(os.path.join(DOCS, "onpolicy-data.md")).split("## On a laptop")[1]
    documented = re.search(r"```bash\n(.*?)\n```", section, flags=re.S).group(1).splitlines()
    assert commands(header) == commands(documented)
    train = next(command for command in commands(header) if command.startswith("simpo-train"))
    assert "--logging_steps=1" in train.split()
