"""Benchmarks: the connector against direct, a minimal aiohttp proxy, nginx, the Node stack and
the /nc store-and-forward ceiling, in one run (issues 8 and 27).

Run `python -m bench --help`. Nothing here is imported by beeflow or by its tests; the bench's
own tests are in bench/tests (`python -m pytest bench/tests`).
"""
