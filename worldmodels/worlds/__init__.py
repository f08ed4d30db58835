"""World compositions (encoder + dynamics + reward/end), one module each.

Every module here is imported by ``worldmodels.registry.WORLDS`` when a world name is first
looked up; a module registers its world with ``@WORLDS.register("name")``.
"""
