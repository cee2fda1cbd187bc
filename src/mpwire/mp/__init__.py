"""All of multiprocessing on mpwire: a context of its own, or installed for the program."""

from .context import get_context
from .installer import install, installed, uninstall

__all__ = ["get_context", "install", "installed", "uninstall"]
