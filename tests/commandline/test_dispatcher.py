"""One usage error and one dispatcher for every `python -m` entry point: one line, exit 2, before anything starts."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from commandline import UsageError, command_parser, run_command
from real_processes import REPO


@pytest.mark.parametrize("argv, line", [
    (["orchestrator", "submit", "--batch", "0"], "error: --batch must be at least 1, got 0 (--batch)"),
    (["conversion", "make-checkpoint", "--out", "/nonexistent/folder/x.pth", "--seed", "1"],
     "error: output folder does not exist (/nonexistent/folder/x.pth)"),
    (["workers", "--device", "gpu0"], "error: bad device 'gpu0': expected cpu:N, cuda:N or npu:N (--device)"),
], ids=["orchestrator", "conversion", "workers"])
def test_every_entry_point_prints_bad_input_as_one_line_with_exit_2(argv, line):
    out = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert (out.returncode, out.stderr.strip(), out.stdout) == (2, line, "")


@pytest.fixture
def commands(tmp_path, monkeypatch):
    """Three command modules on sys.path: one that works, one that raises UsageError, one that is interrupted."""
    for name, body in {"cmd_ok": "return 0", "cmd_bad": "raise UsageError('no such file (x.json)')",
                       "cmd_interrupted": "raise KeyboardInterrupt"}.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
            from commandline import UsageError

            def run(args):
                {body}

            def register(sub):
                sub.add_parser("{name}").set_defaults(func=run)
            """))
    (tmp_path / "cmd_broken.py").write_text("import no_such_dependency_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return ("cmd_ok", "cmd_bad", "cmd_interrupted", "cmd_absent")


def test_dispatcher_runs_a_command_and_turns_a_usage_error_into_one_line(commands, capsys):
    parser = command_parser("prog", "what it does", "example: prog cmd_ok", commands)
    assert run_command(parser, ["cmd_ok"]) == 0
    assert run_command(parser, ["cmd_bad"]) == 2
    assert capsys.readouterr().err == "error: no such file (x.json)\n"


def test_an_absent_command_module_is_left_out_but_a_broken_one_is_not(commands):
    parser = command_parser("prog", "", "", commands)
    with pytest.raises(SystemExit):
        parser.parse_args(["cmd_absent"])
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_here"):
        command_parser("prog", "", "", ("cmd_broken",))


def test_ctrl_c_is_one_line_and_exit_130_only_where_the_command_stops_what_it_started(commands, capsys):
    parser = command_parser("prog", "", "", commands)
    assert run_command(parser, ["cmd_interrupted"], interrupted="interrupted: all stopped") == 130
    assert capsys.readouterr().err == "interrupted: all stopped\n"
    with pytest.raises(KeyboardInterrupt):
        run_command(parser, ["cmd_interrupted"])


def test_the_usage_error_is_one_class_everywhere():
    import orchestrator.cli
    import conversion.verify
    assert orchestrator.cli.UsageError is conversion.verify.UsageError is UsageError
