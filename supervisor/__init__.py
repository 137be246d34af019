"""Corral's core: the trio supervisor that owns time, state and the socket.

The core knows nothing about Linux details; namespaces, mounts, cgroups and
network devices are the business of plugins, reached through the hooks in
:mod:`supervisor.hookspecs`.
"""
