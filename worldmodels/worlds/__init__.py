"""World compositions (encoder + dynamics + reward/end). Importing this package registers them."""
