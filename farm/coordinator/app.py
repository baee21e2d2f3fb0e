"""The Celery application. Server-less by default (a folder below FARM_HOME), Redis when configured.

Tasks are plain functions in `farm.worker.task` (the build, on a queue named for its platform)
and `farm.coordinator.tasks` (events from workers, on the `coordinator` queue).
"""

from __future__ import annotations

from celery import Celery

import farm.coordinator.broker  # noqa: F401  (registers the farmfs:// transport)
from farm.config import Settings, get_settings
from farm.messages import COORDINATOR_QUEUE


ALL_TASKS = ("farm.worker.task", "farm.coordinator.tasks")
WORKER_TASKS = ("farm.worker.task",)  # a platform worker: no coordinator task, so no database module


def make_app(settings: Settings | None = None, *, include: tuple[str, ...] = ALL_TASKS) -> Celery:
    settings = settings or get_settings()
    app = Celery("farm", include=list(include))
    conf: dict = {
        "broker_url": settings.broker,
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": COORDINATOR_QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "worker_enable_remote_control": False,
        "task_send_sent_event": False,
        "worker_send_task_events": False,
    }
    if settings.broker.startswith("farmfs"):
        queue = settings.broker_folder / "queue"
        for sub in ("queue", "processed", "control"):
            (settings.broker_folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(queue), "data_folder_out": str(queue),
            "processed_folder": str(settings.broker_folder / "processed"), "store_processed": False,
            "control_folder": str(settings.broker_folder / "control"),
            "polling_interval": settings.poll_interval,
        }
    elif settings.broker.startswith("redis"):
        # Late ack on Redis: a delivered message stays in Redis's "unacked" set until the task ends,
        # and goes back to its queue only after `visibility_timeout` seconds. That must exceed the
        # longest job, or a running build would be delivered a second time. A worker that died is
        # noticed much sooner by the reconciler (no heartbeat for `lost_after` seconds), which sends
        # a new attempt; the old message, should it come back, is skipped (farm.liveness).
        # Ten priority steps: 0 is served first on Redis (farm.coordinator.dispatch maps the job's
        # priority, higher first, onto them).
        conf["broker_transport_options"] = {
            "visibility_timeout": max(4 * 3600, int(2 * (settings.build_timeout + settings.test_timeout))),
            "queue_order_strategy": "priority", "priority_steps": list(range(10)),
        }
        # A broker restart takes seconds: keep trying to send for about a minute before giving up.
        conf["task_publish_retry_policy"] = {"max_retries": 30, "interval_start": 0, "interval_step": 0.5,
                                             "interval_max": 2}
    app.conf.update(conf)
    return app


_app: Celery | None = None


def get_app(*, include: tuple[str, ...] = ALL_TASKS) -> Celery:
    """The process's Celery app; `include` counts only for the first call (a worker passes WORKER_TASKS)."""
    global _app
    if _app is None:
        _app = make_app(include=include)
    return _app


def reset_app() -> None:
    global _app
    _app = None


class _LazyApp:
    """`celery -A farm.coordinator.app` finds this; it builds the app from the settings on first use."""

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(get_app(), name)


app = _LazyApp()
