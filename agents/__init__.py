"""Agents (stage 3), one module each (``sb3.py`` registers several).

Every module here is imported by ``worldmodels.registry.AGENTS`` when an agent name is first
looked up; a module registers its agent with ``@AGENTS.register("name")``.
"""
