"""Runnable examples: two demo holders and a demo app that talk to the broker through the SDK.

``python examples/run.py`` (or ``make run``) starts the broker with all of them.
"""
