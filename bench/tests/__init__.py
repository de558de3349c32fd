"""Tests of the bench's own parts (not of the connector): `python -m pytest bench/tests`."""
