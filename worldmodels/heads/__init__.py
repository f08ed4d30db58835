"""Heads that predict reward and episode end."""
