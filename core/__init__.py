"""Shoal: a PostgreSQL-backed job queue whose workers scale themselves."""

from shoal.client import Client, JobResult, NewJob, enqueue, enqueue_many
from shoal.errors import PermanentError, ShoalError, UnknownQueueError, ValidationError
from shoal.tasks import Job, task
from shoal.version import __version__

__all__ = [
    "Client", "Job", "JobResult", "NewJob", "PermanentError", "ShoalError", "UnknownQueueError",
    "ValidationError", "__version__", "enqueue", "enqueue_many", "task",
]
