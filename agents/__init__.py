"""Agents (stage 3). Importing this package registers the built-in ones in ``AGENTS``."""

import agents.actor_critic  # noqa: F401  (registers "actor_critic")
import agents.cmaes  # noqa: F401  (registers "cmaes")
import agents.sb3  # noqa: F401  (registers "sb3_ppo", "sb3_a2c", "sb3_dqn")
from agents import random  # noqa: F401  (registers "random")
