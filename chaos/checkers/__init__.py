"""Checkers: pure functions from a chaos history to a verdict."""
