"""Stage 1 encoders (observation -> latent). Importing this package registers the built-ins."""
