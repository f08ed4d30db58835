"""Stage 1 encoders (observation -> latent), one module each: building blocks that a world
composes (the VQ-VAE in ``iris``, the ConvVAE in ``vae``); the world is the unit a run chooses."""
