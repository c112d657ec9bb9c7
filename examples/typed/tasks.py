"""Typed tasks: the payload is declared once, checked at the worker's boundary, and typed for mypy.

    shoal worker --queue mail --tasks examples.typed.tasks      (run from the repo root)

`tests/core/test_typed_tasks.py` runs `mypy --strict` on this module and runs its tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypedDict

import shoal


@dataclass
class Email:
    to: str
    subject: str
    cc: list[str] = field(default_factory=list)
    priority: Literal["low", "high"] = "low"


class Resize(TypedDict):
    url: str
    width: int
    height: int


@shoal.task("mail.send", payload=Email)
async def send(job: shoal.Job[Email]) -> None:
    email = job.payload  # an Email: mypy knows it, and the worker converted the JSON before this ran
    recipients: list[str] = [email.to, *email.cc]
    print(f"sending {email.subject!r} to {', '.join(recipients)} ({email.priority})")


@shoal.task("images.resize", payload=Resize)
def resize(job: shoal.Job[Resize]) -> str:
    size = job.payload
    return f"{size['url']} at {size['width']}x{size['height']}"


async def enqueue_welcome(db: shoal.Client) -> int:
    """A producer hands in the dataclass itself."""
    return await db.enqueue("mail", "mail.send", Email(to="ada@example.com", subject="Welcome"))
