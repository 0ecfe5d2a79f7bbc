"""Errors a user can act on.

Every problem with user input (a tile, a mask, a checkpoint, a folder) is raised as a
:class:`DataError` whose message names the file and the problem.  The CLI prints that message
and exits with status 2 instead of showing a traceback from deep inside rasterio or torch.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad user input: the message names the file and says what is wrong with it."""


class ConfigError(ValueError):
    """A configuration value outside what the kit supports; the message lists the valid ones."""
