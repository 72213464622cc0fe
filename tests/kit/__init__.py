"""Tests of the domain-free helpers in ``app/kit``."""
