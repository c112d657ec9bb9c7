"""The worker's side: `shoal worker --queue emails --tasks shop.tasks` (with this folder on PYTHONPATH).
It needs neither Django nor psycopg: the job carries everything the handler needs."""

import logging

from shoal import Job, task

log = logging.getLogger(__name__)


@task("shop.send_welcome")
async def send_welcome(job: Job) -> None:
    log.info("welcome email", extra={"to": job.payload["email"]})  # a real app would send it here
