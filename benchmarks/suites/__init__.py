"""One module per suite; each exposes ``run(lines: int) -> Result``."""
