"""Tests of the cgroups plugin: pure units (test_units) and black-box daemon tests (test_limits)."""
