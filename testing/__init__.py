"""Harnesses the tests (tests/) and the benchmarks (bench/) share; not used by Shoal itself.

- :mod:`shoal.testing.postgres`: an embedded PostgreSQL (or the one $SHOAL_DATABASE_URL names)
  for the length of a ``with`` block.
- :mod:`shoal.testing.workers`: ``shoal worker`` as a real process.
- :mod:`shoal.testing.k8s`: a Kubernetes API emulator (kmock, a dev dependency), its thread,
  a kubeconfig for it, kubectl, and ``shoal operator`` as a real process.

Nothing under ``shoal`` outside this package imports it (an import contract in pyproject.toml), and
importing ``shoal.testing`` alone imports nothing: the dev-only dependencies (pgserver, kmock,
PyYAML) are only needed by the submodule that uses them.
"""
