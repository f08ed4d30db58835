"""Stage 2 dynamics models, one module each; ``DYNAMICS`` imports them all."""
