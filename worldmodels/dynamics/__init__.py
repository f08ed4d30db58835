"""Stage 2 dynamics models, one module each: building blocks that a world composes (the
transformer in ``iris``, the MDN-RNN in ``vae``); the world is the unit a run chooses and swaps."""
