"""Connectors: the systems that hold personal data, how they are called, and their answers."""
