"""The CLI's commands as library calls (``commands``: run, list, show, serve) and its console (progress,
live tokens, the summary table).  ``runner.py`` only parses arguments and calls these."""
