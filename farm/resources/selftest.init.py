"""Wheel Farm's self-test sample. Importing it calls its C extension, so an import is the test."""

from farm_selftest._native import add

if add(2, 3) != 5:
    raise ImportError("farm_selftest: the C extension computes 2 + 3 wrongly")
