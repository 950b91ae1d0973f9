"""Package list for setuptools (everything else is in pyproject.toml; see the comment there)."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["optimum_si", "optimum_si.*"]) + ["optimum.commands.register"])
