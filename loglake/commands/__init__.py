"""The shell's commands behind `loglake storage ...` and `loglake keys ...`."""
