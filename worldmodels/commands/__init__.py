"""The command-line programs: ``train`` and ``evaluate`` (``python -m worldmodels <command>``,
the ``worldmodels-train`` / ``worldmodels-evaluate`` console scripts, and the repository's
``train.py`` / ``evaluate.py``)."""
