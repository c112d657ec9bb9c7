"""Traces from the producer to the handler (the optional `shoal[otel]` extra); filled in by issue 17."""
