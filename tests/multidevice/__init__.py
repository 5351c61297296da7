"""Helpers for the multi-device tests: programs run in subprocesses with fake CPU devices."""
