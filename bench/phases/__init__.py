"""The phases of a run, one module each, every one with a ``measure()``.

:mod:`.cold` (cold runs), :mod:`.exec` (exec in a running container),
:mod:`.density` (many idle containers, and :mod:`.scrape`: metrics scrapes with them
present), :mod:`.control` (the control plane under load), :mod:`.stream` (output
streaming), :mod:`.events`, :mod:`.ci` (CI jobs through the drivers of ``executors/``)
and :mod:`.profile` (py-spy on the daemon). :mod:`.common` holds what they share:
:class:`.common.Bench` and the round-robin of the cold and exec phases.
"""
