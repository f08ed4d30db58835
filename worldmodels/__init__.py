"""World-model reinforcement learning on real Atari games."""

__version__ = "0.1.0"
