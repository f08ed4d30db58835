"""``python evaluate.py ...`` from a checkout: the same program as ``python -m worldmodels evaluate``
(``worldmodels/commands/evaluate.py``, whose ``--help`` documents it)."""

import sys

from worldmodels.commands.evaluate import cli, main  # noqa: F401  (scripts and tests call main)

if __name__ == "__main__":
    sys.exit(cli())
