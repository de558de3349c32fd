"""Benchmarks: the connector's cost as ratios against a direct connection, in one run (issue 8).

Run `python -m bench --help`. Nothing here is imported by beeflow or by the tests.
"""
