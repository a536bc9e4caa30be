"""Issue 10 item 8: shell completion (bash, zsh), `crmsync version`, and a man page generated from the CLI (the
shipped page is current)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from crmsync import __version__
from crmsync.daemon import cli, cli_docs

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_man_page_is_the_generated_one() -> None:
    shipped = (ROOT / "man" / "crmsync.1").read_text()
    assert shipped == cli_docs.manpage(cli.build_parser()), "regenerate: crmsync man > man/crmsync.1"


def test_the_man_page_covers_every_command_option_and_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["man"]) == 0
    page = capsys.readouterr().out
    for command in cli_docs.commands(cli.build_parser()):
        assert f"\\fBcrmsync {command.name.replace('-', chr(92) + '-')}\\fR" in page, command.name
        for option in command.options:
            assert option.flags[-1].replace("-", "\\-") in page
    for code in ("4", "5", "6"):
        assert f".TP\n{code}\n" in page
    assert f'"crmsync {__version__}"' in page


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_the_man_page_renders_without_warnings() -> None:
    done = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=cli_docs.manpage(cli.build_parser()),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""


def _bash_complete(script: str, *words: str) -> list[str]:
    line = " ".join(words)
    program = (f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _crmsync; "
               'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_completes_commands_options_and_values() -> None:
    script = cli_docs.completion(cli.build_parser(), "bash")
    assert set(_bash_complete(script, "crmsync", "ru")) == {"run", "runs", "run-flow"}
    assert _bash_complete(script, "crmsync", "report", "ea-mc", "--out") == ["--outcome"]
    assert _bash_complete(script, "crmsync", "report", "ea-mc", "--outcome", "re") == ["rejected"]
    assert "--from-start" in _bash_complete(script, "crmsync", "full-sync", "x", "--")
    assert _bash_complete(script, "crmsync", "completion", "z") == ["zsh"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_is_valid_zsh_naming_every_command(tmp_path: Path) -> None:
    script = cli_docs.completion(cli.build_parser(), "zsh")
    path = tmp_path / "_crmsync"
    path.write_text(script)
    done = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert script.startswith("#compdef crmsync\n")
    for command in cli_docs.commands(cli.build_parser()):
        assert f"'{command.name}:" in script and f"        {command.name})" in script


def test_completion_command_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["completion", "bash"]) == 0
    assert "complete -F _crmsync crmsync" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.startswith(f"crmsync {__version__} (Python 3.")
    assert cli.main(["version", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == __version__
