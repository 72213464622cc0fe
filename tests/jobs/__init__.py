"""Tests of the job engine: retry decisions (pure), claim and lease, the worker loop."""
