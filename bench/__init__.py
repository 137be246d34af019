"""Corral's benchmark: Corral against crun, runc, bubblewrap, unshare, nsenter and podman.

The entry point is ``bench/run.py`` (see bench/README.md). Modules by role:

- :mod:`bench.run`: the command line and the order of the run.
- :mod:`bench.host`: commands, /proc, the cgroup v2 quirk, the clean-up and its check.
- :mod:`bench.peers`: one small class per peer tool, on private copies of the rootfs.
- :mod:`bench.daemon`: the private corrald (:class:`supervisor.testing.PrivateDaemon`).
- :mod:`bench.phases`: one module per phase (cold, exec, density, control, stream, profile).
- :mod:`bench.stats`: summaries and ratios.
- :mod:`bench.report`: RESULTS.md, one function per section.
"""
