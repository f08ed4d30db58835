"""Shared network pieces: blocks, pixel conversions."""
