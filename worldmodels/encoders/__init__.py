"""Stage 1 encoders (observation -> latent). Importing this package registers the built-ins."""

import worldmodels.encoders.vae  # noqa: F401  (registers "vae")
import worldmodels.encoders.vqvae  # noqa: F401  (registers "vqvae")
