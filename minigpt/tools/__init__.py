"""The `minigpt` command's tools (minigpt/__main__.py dispatches to them): report, plot-run,
plot-schedules, predict, sample. Each module holds its argument parsing and a `main(argv, prog)`
that returns the exit status; the work is done by the package (minigpt/studies, minigpt/plots,
minigpt/run). One convention: the inputs are positional, a written file is `-o/--out`, and
`--help` ends with examples (the module's docstring)."""

from __future__ import annotations

import argparse


def parser(doc: str, prog: str | None) -> argparse.ArgumentParser:
    """A tool's parser: its docstring's first paragraph as the description, the rest (examples
    and notes) after the options in --help."""
    first, _, rest = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(prog=prog, description=first, epilog=rest.strip() or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
