"""Docs that cannot drift: the site builds with --strict, and every command they show composes with today's configs.

Each `python -m defectseg.<entry point> ...` and `make <target> ARGS="..."` shown in README.md and docs/ is composed
with Hydra's compose API (the entry point's own config name, the command's overrides; sweeps one value at a time), so a
renamed key, config group or option fails here instead of in a user's shell. Nothing trains.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from defectseg.config import register

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# make targets that run one entry point with $(ARGS) appended
MAKE_TARGETS = {"pretrain": "pretrain", "finetune": "finetune", "predict": "predict", "export": "export"}
MAKE_TARGETS["check-data"] = "check_data"


@dataclass
class Command:
    source: str  # file:line, for the failure message
    module: str  # defectseg.finetune
    args: list[str] = field(default_factory=list)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Shell code blocks (continuations joined) and inline code spans, with line numbers; output blocks are no
    commands."""
    found: list[tuple[int, str]] = []
    in_block: str | bool = False
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fence = line.strip()[3:].strip()
            in_block, pending = (False if in_block else fence or "text"), ""
            continue
        if in_block in ("bash", "sh", "shell", "console"):
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            found.append((start, pending + line))
            pending = ""
        elif not in_block:
            found.extend((number, span) for span in re.findall(r"`([^`]+)`", line))
    return found


def _strip_comment(line: str) -> str:
    """Drop a shell comment (a # outside quotes that starts a word)."""
    quote = None
    for i, char in enumerate(line):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _split_shell(line: str) -> list[str]:
    """Split a shell line at ; and && outside quotes."""
    parts, current, quote, i = [], "", None, 0
    while i < len(line):
        char = line[i]
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif quote is None and (char == ";" or line.startswith("&&", i)):
            parts.append(current)
            current, i = "", i + (2 if char == "&" else 1)
            continue
        current += char
        i += 1
    return [*parts, current]


def _expand(text: str, variables: dict[str, str]) -> str:
    """$VAR and ${VAR} from the block's assignments; ${hydra:...} interpolations stay."""
    return re.sub(r"\$\{?(\w+)\}?(?!:)", lambda m: variables.get(m.group(1), m.group(0)), text)


def _split_args(text: str, source: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as error:
        raise ValueError(f"{source}: cannot split {text!r}: {error}") from error


def documented_commands() -> list[Command]:
    commands: list[Command] = []
    for path in DOC_FILES:
        variables: dict[str, str] = {}
        for number, raw in _logical_lines(path.read_text(encoding="utf-8")):
            source = f"{path.relative_to(ROOT)}:{number}"
            for part in _split_shell(_strip_comment(raw)):
                part = re.sub(r"^do\s+", "", part.strip())
                loop = re.match(r"for (\w+) in (.+)$", part)
                if loop:  # `for t in a b c`: commands in the loop take its first value
                    variables[loop.group(1)] = loop.group(2).split()[0]
                    continue
                assignment = re.match(r"^(\w+)=(\"[^\"]*\"|'[^']*'|\S+)$", part)
                if assignment:
                    variables[assignment.group(1)] = assignment.group(2).strip("\"'")
                    continue
                expanded = _expand(part, variables)
                module = re.search(r"python -m (defectseg(?:\.\w+)+)(.*)$", expanded)
                if module:
                    commands.append(Command(source, module.group(1), _split_args(module.group(2), source)))
                    continue
                make = re.match(r"make ([\w-]+)(.*)$", expanded)
                if make:
                    commands.append(Command(source, f"make {make.group(1)}", _split_args(make.group(2), source)))
    return commands


COMMANDS = documented_commands()


def _config_name(module: str) -> str | None:
    """The config name the module's @entry_point (or @hydra.main) composes; None without one (report, synthetic)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"no module {module}"
    source = Path(spec.origin).read_text(encoding="utf-8")
    match = re.search(r"@(?:hydra\.main\([^)]*config_name=|entry_point\()\"(\w+)\"", source)
    return match.group(1) if match else None


def _one_value_at_a_time(overrides: list[str]) -> list[list[str]]:
    """A sweep's overrides as plain runs: every axis at its first value, then each other value of each axis once."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for text, override in zip(overrides, parsed, strict=True):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([text])
    first = [values[0] for values in choices]
    runs = [first]
    for axis, values in enumerate(choices):
        for value in values[1:]:
            runs.append([*first[:axis], value, *first[axis + 1 :]])
    return runs


def _compose(config_name: str, overrides: list[str]) -> None:
    GlobalHydra.instance().clear()
    register()  # the stage configs extend their schemas (defectseg/config/schemas.py)
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            for run in _one_value_at_a_time(overrides):
                compose(config_name=config_name, overrides=run, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _make_variables(args: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in args if re.match(r"^[A-Z_0-9]+=", arg))


def test_the_docs_show_commands_to_check():
    modules = {command.module for command in COMMANDS}
    assert {"defectseg.pretrain", "defectseg.finetune", "defectseg.predict", "defectseg.export"} <= modules
    assert any(command.source.startswith("README.md") for command in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.source} {c.module}")
def test_documented_command_composes(command: Command):
    if command.module.startswith("make "):
        target = command.module.split()[1]
        makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{command.source}: no make target {target}"
        variables = _make_variables(command.args)
        args = shlex.split(variables.get("ARGS", ""))
        if target in MAKE_TARGETS:
            _compose(MAKE_TARGETS[target], args)
        elif target in ("compare", "label-efficiency"):
            experiment = f"experiment={variables.get('EXPERIMENT', 'quick')}"
            _compose("pretrain", [experiment, *shlex.split(variables.get("STAGE1_ARGS", "")), *args])
            _compose("finetune", [experiment, *args])
        return
    config_name = _config_name(command.module)
    if config_name is None:
        return  # an argparse tool (report, synthetic data): find_spec above checked that it exists
    overrides = [arg for arg in command.args if arg not in ("-m", "--multirun")]
    try:
        _compose(config_name, overrides)
    except Exception as error:  # the message names the command, then Hydra's reason
        pytest.fail(f"{command.source}: python -m {command.module} {' '.join(command.args)}\n  {error}")


def test_a_renamed_key_is_caught(tmp_path):
    """The check itself: a command with a key the config lacks fails to compose."""
    with pytest.raises(Exception, match="image_sze"):
        _compose("finetune", ["dataset.image_sze=128"])
    with pytest.raises(Exception, match="no_such_option"):
        _compose("finetune", ["freeze=encoder,no_such_option"])


def _build_site(site: Path, project: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_docs_build_strict(tmp_path):
    """mkdocs build --strict: a broken link, a missing page or a page left out of the nav fails."""
    result = _build_site(tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "results" / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    """The check itself: the same site with one link to a missing page does not build."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    with (tmp_path / "docs" / "index.md").open("a", encoding="utf-8") as page:
        page.write("\n[gone](no_such_page.md)\n")
    result = _build_site(tmp_path / "site", project=tmp_path)
    assert result.returncode != 0
    assert "no_such_page.md" in result.stdout + result.stderr


def test_readme_links_exist():
    """The README is read on GitHub, outside the site: its relative links must name files that exist."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets
    missing = [t for t in targets if not t.startswith(("http://", "https://")) and not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
    assert "../shared" not in text, "README.md must not depend on ../shared, which users do not have"


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
