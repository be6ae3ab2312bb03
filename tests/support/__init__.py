"""What the tests and the benchmarks both use: real redis-server and asklane processes, the fake
Slack and Anthropic servers, signed Slack requests, and ways to wait for and measure what they do.

Plain code, no pytest fixtures: tests/conftest.py wraps these in fixtures, and bench/ imports them
directly (never conftest.py).
"""
