"""Helpers for the experiment drivers in ``scripts/`` that regenerate the docs tables."""
