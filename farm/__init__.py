"""Wheel Farm: sdists in; repaired, tested, attested wheels out, on an index pip and uv use as they are."""

__version__ = "0.1.0"
