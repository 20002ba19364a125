"""End-to-end tests with a real Postfix and Dovecot.

A package, so that its conftest is `e2e.conftest` and does not shadow tests/conftest.py.
"""
