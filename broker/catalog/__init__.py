"""The registry of data holders and third-party apps, and the public catalog."""
