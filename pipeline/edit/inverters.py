"""The inverters an edit can ask for, by name; importable without numpy or torch (the CLI's ``--help``)."""

INVERSIONS = ("e4e", "sfe")  # ``Editor.invert``'s inverters; the first is the default (sfe needs its model)
