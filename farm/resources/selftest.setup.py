# The sample's C extension (setup.py: setuptools' pyproject.toml form of it is still experimental).
from setuptools import Extension, setup

setup(ext_modules=[Extension("farm_selftest._native", ["src/native.c"])])
