"""Shared pytest configuration."""

pytest_plugins = ["tests.lookalike.fixtures", "tests.pg"]
