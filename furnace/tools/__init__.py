"""Command-line tools of furnace, run as ``python -m furnace.tools.<tool>``."""
