"""Kubernetes test harness: the API emulator (emulator.py) and what runs around it (cluster.py)."""
