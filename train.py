"""``python train.py ...`` from a checkout: the same program as ``python -m worldmodels train``
(``worldmodels/commands/train.py``, whose ``--help`` documents it)."""

import sys

from worldmodels.commands.train import cli, main  # noqa: F401  (scripts and tests call main)

if __name__ == "__main__":
    sys.exit(cli())
