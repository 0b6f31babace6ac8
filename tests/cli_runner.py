"""`param-decomp ...` run the way a test needs it.

`run_cli` calls the command's own `main` in this process, with stdout and stderr captured: the
same argument parsing, exit codes and messages as the installed command, without a new Python
that re-imports JAX and recompiles what this process already compiled. Tests whose point is a
separate process (a real signal, several processes, the console entry point itself) start one
with `cli_command` instead.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli_command(*args: str) -> list[str]:
    """The argv of a separate `param-decomp` process."""
    return [sys.executable, "-m", "param_decomp.cli", *args]


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`param-decomp *args` in this process, from `cwd`: its exit code and captured output."""
    from param_decomp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse: --help (0) and usage errors (2)
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
