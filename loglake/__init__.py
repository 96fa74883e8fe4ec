"""loglake: configuration, the CLI, the frame format and the process supervisor."""

__version__ = "0.1.0"
