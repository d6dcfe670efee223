"""Every command's --help prints (argparse %-formats help strings: a stray '%' breaks only the help)."""

from __future__ import annotations

import pytest

from attnsearch.cli import build_parser, main


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse has no public listing
    return sorted(sub.choices)


@pytest.mark.parametrize("argv", [["--help"], *[[c, "--help"] for c in _commands()]])
def test_help_prints(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: attnsearch")
