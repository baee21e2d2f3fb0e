"""The coordinator's Celery tasks: events, heartbeats and registrations from workers."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from farm.config import get_settings
from farm.coordinator.events import apply_event
from farm.coordinator.reconcile import record_heartbeat
from farm.coordinator.workers import record as record_registration
from farm.messages import EVENT_TASK, HEARTBEAT_TASK, REGISTER_TASK, Heartbeat, JobEvent, WorkerRegistration


@shared_task(name=EVENT_TASK, acks_late=True)
def event(payload: dict[str, Any]) -> None:
    apply_event(JobEvent.model_validate(payload), get_settings())


@shared_task(name=HEARTBEAT_TASK, acks_late=True)
def heartbeat(payload: dict[str, Any]) -> None:
    record_heartbeat(Heartbeat.model_validate(payload))


@shared_task(name=REGISTER_TASK, acks_late=True)
def register(payload: dict[str, Any]) -> None:
    record_registration(WorkerRegistration.model_validate(payload), get_settings())
