"""World compositions (encoder + dynamics + reward/end). Importing this package registers them."""

import worldmodels.worlds.diffusion  # noqa: F401  (registers "diffusion")
import worldmodels.worlds.iris  # noqa: F401  (registers "iris")
import worldmodels.worlds.vae  # noqa: F401  (registers "vae")
