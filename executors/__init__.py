"""CI executors: drivers that let a CI runner run each job in a Corral container.

``gitlab`` is a GitLab Runner custom executor driver, ``github`` the GitHub Actions
runner's container hooks. Both are clients of the daemon: they import only
``supervisor.client`` and ``supervisor.errors``. See docs/ci-executors.md.
"""
