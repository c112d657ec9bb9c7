"""Shoal: a PostgreSQL-backed job queue whose workers scale themselves."""
