"""Stage 2 dynamics models. Importing this package registers the built-ins."""

import worldmodels.dynamics.mdn_rnn  # noqa: F401  (registers "mdn_rnn")
from worldmodels.dynamics import transformer  # noqa: F401  (registers "transformer")
