"""cgroups plugin (placeholder): limits, stats and the OOM watcher.

Until it is built (see the limits issue), containers run without resource
limits. This module registers no hook yet.
"""
