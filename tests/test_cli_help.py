"""Every option of every ``samtriton`` subcommand has help text that shows its default."""

import argparse
import subprocess
import sys

from samtriton.tools.cli import HelpFormatter, build_parser, parsers


def test_every_option_has_help_and_shows_its_default():
    missing = []
    for parser in parsers(build_parser()):
        formatter = HelpFormatter(parser.prog)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            text = formatter._get_help_string(action)
            if not (action.help or "").strip():
                missing.append(f"{parser.prog} {action.dest}: no help")
            elif action.option_strings and "default" not in text and "(required)" not in text:
                missing.append(f"{parser.prog} {action.option_strings[0]}: no default shown")
        parser.format_help()  # every %(default)s expands
    assert not missing, "\n".join(missing)


def test_help_lists_annotate_and_defaults():
    out = subprocess.run([sys.executable, "-m", "samtriton.tools.cli", "--help"], capture_output=True, text=True, check=True)
    assert "annotate" in out.stdout
    for command, expected in (("segment", "(default: 127.0.0.1:8001)"), ("annotate", "(default: 8080)"),
                              ("annotate", "(required)")):
        out = subprocess.run([sys.executable, "-m", "samtriton.tools.cli", command, "--help"],
                             capture_output=True, text=True, check=True)
        assert expected in " ".join(out.stdout.split()), out.stdout
