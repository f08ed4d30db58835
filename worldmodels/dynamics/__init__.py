"""Stage 2 dynamics models. Importing this package registers the built-ins."""
