"""APScheduler wiring: a cron or interval trigger that runs a cycle when enough new data arrived.

One job, `max_instances=1` and `coalesce=True` so cycles never overlap inside the process (the
cycle lock covers other processes); `misfire_grace_time` is explicit because APScheduler 3's
default of one second silently drops a run that starts late.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from daemon.config import ScheduleConfig

log = logging.getLogger("ticketune.scheduler")

JOB_ID = "retrain-cycle"
_BUSY_MESSAGE = "maximum number of running instances reached"


class _BusyTickIsInfo(logging.Filter):
    """APScheduler warns on every tick it skips because the previous cycle still runs; with a frequent
    interval and a long cycle that is expected, not a warning: it is logged at INFO instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and _BUSY_MESSAGE in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("apscheduler.scheduler").addFilter(_BusyTickIsInfo())


def build_trigger(cfg: ScheduleConfig) -> CronTrigger | IntervalTrigger:
    if cfg.interval_minutes is not None:
        return IntervalTrigger(minutes=cfg.interval_minutes, timezone=cfg.timezone)
    if cfg.cron is None:
        raise ValueError("schedule needs cron or interval_minutes")
    return CronTrigger.from_crontab(cfg.cron, timezone=cfg.timezone)


def start_scheduler(cfg: ScheduleConfig, run_cycle: Callable[[], object]) -> BackgroundScheduler | None:
    """Starts the retrain schedule; `run_cycle` applies the min_new_examples rule itself."""
    if not cfg.enabled:
        log.info("schedule disabled: cycles run only on demand")
        return None
    scheduler = BackgroundScheduler(timezone=cfg.timezone)
    scheduler.add_job(
        run_cycle,
        build_trigger(cfg),
        id=JOB_ID,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=cfg.misfire_grace_seconds,
    )
    scheduler.start()
    job = scheduler.get_job(JOB_ID)
    log.info("retrain schedule started; next run at %s", job.next_run_time.isoformat() if job else "never")
    return scheduler


def next_run_time(scheduler: BackgroundScheduler | None) -> str | None:
    job = scheduler.get_job(JOB_ID) if scheduler is not None else None
    return job.next_run_time.isoformat() if job is not None and job.next_run_time else None
