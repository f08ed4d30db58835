"""Agents (stage 3). Importing this package registers the built-in ones in ``AGENTS``."""

from agents import random  # noqa: F401  (registers "random")
