"""Running a `lorakit` command in-process as the CLI builds it, with its errors raised (not turned into exit 2).

A plain module (not conftest) so tests in any folder can import it: `from commands import run_cli`.
"""

from __future__ import annotations

from types import ModuleType

from lorakit.cli import build_parser, quiet


def parse(command: str | ModuleType, argv: list[str]):
    """The parsed arguments of `lorakit COMMAND ARGV...`."""
    name = command if isinstance(command, str) else command.__name__.rsplit(".", 1)[1]
    return build_parser(name).parse_args([name, *argv])


def run_cli(command: str | ModuleType, argv: list[str]) -> int:
    """Run `lorakit COMMAND ARGV...`; a LoraError propagates to the test."""
    args = parse(command, argv)
    with quiet(args.no_progress):
        return int(args._run(args) or 0)
