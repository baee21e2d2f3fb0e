"""The coordinator's Celery task: events from workers."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from farm.config import get_settings
from farm.coordinator.events import apply_event
from farm.messages import EVENT_TASK, JobEvent


@shared_task(name=EVENT_TASK, acks_late=True)
def event(payload: dict[str, Any]) -> None:
    apply_event(JobEvent.model_validate(payload), get_settings())
