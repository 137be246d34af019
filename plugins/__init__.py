"""Corral's built-in plugins: each folder isolates one concern and is registered
like any third-party plugin (see :mod:`supervisor.hookspecs`)."""
