"""World-model reinforcement learning on real Atari games.

The distribution is this one package. The repository keeps its agents, envs and YAML configs at
the top level (``agents/``, ``envs/``, ``configs/``); they are the subpackages
``worldmodels.agents``, ``worldmodels.envs`` and ``worldmodels.configs`` (symbolic links here in a
checkout, real directories in an installed wheel).
"""

__version__ = "0.1.0"
