"""For scrapyd-deploy, which builds an egg with setup.py; pyproject.toml holds the rest."""

from setuptools import setup

setup()
