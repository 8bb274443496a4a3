"""A consent broker for personal health data."""

__version__ = "0.1.0"
