"""py4DSTEM-transformer: crystal orientation maps from 4D-STEM Bragg disks with a transformer."""

from ._version import __version__

__all__ = ["__version__"]
