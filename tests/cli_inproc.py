"""Run ``train.py`` / ``evaluate.py`` in this process, as ``python train.py ARGS`` would: the
entry point's ``main`` through ``run_main`` (one-line errors, exit 2), argparse's exits included.
Much faster than a subprocess, so tests can try many inputs."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from functools import cache
from pathlib import Path

from worldmodels.cli import run_main

ROOT = Path(__file__).resolve().parent.parent


@cache
def entry_point(script: str):
    """The module of ``ROOT/script`` (``train.py`` or ``evaluate.py``), imported once."""
    spec = importlib.util.spec_from_file_location(f"_entry_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call(script: str, *args, capsys=None) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``script ARGS`` (pytest's ``capsys`` if given)."""
    argv = [str(a) for a in args]
    saved = sys.argv
    sys.argv = [script, *argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        if capsys is None:
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(contextlib.redirect_stderr(err))
        try:
            rc = run_main(entry_point(script).main, argv)
        except SystemExit as exc:  # argparse exits by itself on a bad flag
            rc = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.argv = saved
    if capsys is not None:
        captured = capsys.readouterr()
        return rc, captured.out, captured.err
    return rc, out.getvalue(), err.getvalue()
