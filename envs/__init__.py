"""Environments: real Atari (``atari``), the learned world as an env (``dream``), fakes for tests."""
