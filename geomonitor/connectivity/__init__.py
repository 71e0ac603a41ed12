"""Placeholder package; filled in by its module."""
