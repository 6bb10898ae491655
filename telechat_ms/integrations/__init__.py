"""Integrations with other frameworks; each is imported explicitly (importing this package imports nothing)."""
