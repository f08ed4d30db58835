"""Train an agent in a learned world model of an Atari game.

    python train.py --env Breakout --world diffusion              # the published scale (CUDA)
    python train.py --env Breakout --agent random --preset smoke  # a few minutes on a CPU
    python train.py --resume runs/<name>                          # continue after a crash

``--help`` lists the valid games, worlds, agents, presets and protocols.
"""

import sys

from worldmodels.commands.train import cli, main  # noqa: F401  (scripts and tests call main)

if __name__ == "__main__":
    sys.exit(cli())
