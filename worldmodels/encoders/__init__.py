"""Stage 1 encoders (observation -> latent), one module each; ``ENCODERS`` imports them all."""
