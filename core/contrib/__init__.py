"""Integrations of Shoal's producers with application frameworks (each an extra of its own).

Each subpackage adapts one framework's connection to the core's producer (shoal.sync on psycopg 3,
shoal.producer on asyncpg): it imports the core only, and its framework only there.
"""
