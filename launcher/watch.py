"""Watching jobs: the metric history of a job's log, its status with step, ETA and cost, the list's rows.

The metric history comes from the job's ``METRIC`` / ``METRIC_SESSION`` log lines (CloudWatch
Logs, filtered on the server), parsed into the same records as ``metrics.jsonl``, so the
newest values are the newest lines whatever the log's length, and a running job can be
plotted. Everything here returns plain data; the commands format it (:mod:`launcher.ui`).
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

from . import costs, jobs
from .aws import Aws

log = logging.getLogger(__name__)

# CloudWatch Logs, "Filter pattern syntax for metric filters, subscription filters, filter log
# events, and Live Tail": `?a ?b` matches events holding either term.
METRIC_FILTER = "?METRIC ?METRIC_SESSION"
RATE_WINDOW = 5  # train records averaged for the ETA's seconds per batch


# ---------------------------------------------------------------------------------------
# Metric history


@dataclass
class History:
    """Metric records of one run, oldest first (``kind``, ``step``, values[, ``session``])."""

    records: list[dict] = field(default_factory=list)

    def of(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("kind") == kind]

    def latest(self, kind: str) -> Optional[dict]:
        found = self.of(kind)
        return found[-1] if found else None

    def best_val(self) -> Optional[dict]:
        vals = [r for r in self.of("val") if isinstance(r.get("val_PER"), float)]
        return min(vals, key=lambda r: (r["val_PER"], r["step"])) if vals else None

    @property
    def steps_done(self) -> Optional[int]:
        """Batches completed at the newest record (a record's step is the batch just finished)."""
        newest = [r for r in self.records if r.get("kind") in ("train", "val")]
        return newest[-1]["step"] + 1 if newest else None

    def sec_per_batch(self) -> Optional[float]:
        rates = [r["sec_per_batch"] for r in self.of("train")[-RATE_WINDOW:] if isinstance(r.get("sec_per_batch"), float)]
        return statistics.fmean(rates) if rates else None


def log_history(aws: Aws, log_group: str, job: str) -> History:
    """The job's metric lines from every log stream of the job (spot restarts add streams)."""
    from trainer.metrics import parse_metric_line

    events = sorted(
        jobs.log_events(aws, log_group, job, filter_pattern=METRIC_FILTER),
        key=lambda e: (e["timestamp"], e.get("ingestionTime", 0)),
    )
    records = []
    for event in events:
        record = parse_metric_line(event["message"])
        if record is not None:
            records.append({**record, "time": event["timestamp"] / 1000})
    return History(records)


# ---------------------------------------------------------------------------------------
# Status


@dataclass
class Plan:
    """What the job's config says about its length (None where it could not be read)."""

    total: Optional[int] = None
    val_every: Optional[int] = None
    config_file: str = ""


def job_plan(aws: Aws, desc: dict[str, Any]) -> Plan:
    """``num_training_batches`` and ``batches_per_val_step`` of the job's config (its config channel)."""
    from trainer.config import ConfigError

    from .errors import LauncherError

    hp = desc.get("HyperParameters", {}) or {}
    plan = Plan(config_file=hp.get("config_file", ""))
    try:
        loaded, _ = jobs.job_config(aws, desc)
    except (LauncherError, ConfigError) as e:
        log.info("no config for %s: %s", desc.get("TrainingJobName"), e)
        return plan
    plan.total = loaded.config.num_training_batches
    plan.val_every = loaded.config.batches_per_val_step
    return plan


def validations_left(done: int, total: int, every: Optional[int]) -> int:
    """Validation passes after batches ``done .. total-1`` (every ``every`` batches and after the last)."""
    if not every or done >= total:
        return 0
    last = total - 1
    multiples = last // every - (done - 1) // every  # i % every == 0 for done <= i <= last
    return multiples + (0 if last % every == 0 else 1)


@dataclass
class Status:
    desc: dict[str, Any]
    history: History
    plan: Plan
    now: dt.datetime

    @property
    def name(self) -> str:
        return self.desc["TrainingJobName"]

    @property
    def state(self) -> str:
        return self.desc.get("TrainingJobStatus", "?")

    @property
    def running(self) -> bool:
        return self.state in ("InProgress", "Stopping")

    @property
    def spot(self) -> bool:
        return bool(self.desc.get("EnableManagedSpotTraining"))

    @property
    def elapsed_s(self) -> Optional[float]:
        """Training time so far (SageMaker's figure once the job has ended)."""
        if not self.running and self.desc.get("TrainingTimeInSeconds") is not None:
            return float(self.desc["TrainingTimeInSeconds"])
        started = self.desc.get("TrainingStartTime")
        if not started:
            return None
        end = self.desc.get("TrainingEndTime") or self.now
        return max((end - started).total_seconds(), 0.0)

    @property
    def billable_s(self) -> Optional[float]:
        value = self.desc.get("BillableTimeInSeconds")
        return None if value is None else float(value)

    @property
    def spot_savings_pct(self) -> Optional[float]:
        trained = self.desc.get("TrainingTimeInSeconds")
        if not self.spot or not trained or self.billable_s is None:
            return None
        return (1 - self.billable_s / trained) * 100

    @property
    def usd_per_hour(self) -> Optional[float]:
        rc = self.desc.get("ResourceConfig", {})
        price = costs.price_table().get(rc.get("InstanceType", ""))
        return None if price is None else price.usd_per_hour * rc.get("InstanceCount", 1)

    @property
    def eta_s(self) -> Optional[float]:
        """Time left: batches left × recent seconds per batch + validations left × the last one's time."""
        done, total, rate = self.history.steps_done, self.plan.total, self.history.sec_per_batch()
        if not self.running or done is None or total is None or rate is None:
            return None
        last_val = self.history.latest("val") or {}
        val_s = last_val.get("val_seconds") if isinstance(last_val.get("val_seconds"), float) else 0.0
        return max(total - done, 0) * rate + validations_left(done, total, self.plan.val_every) * val_s

    @property
    def cost_usd(self) -> Optional[float]:
        """Billed so far: billable time at the on-demand rate; while running, elapsed time (an upper bound on spot)."""
        seconds = self.billable_s if self.billable_s is not None and not self.running else self.elapsed_s
        if self.usd_per_hour is None or seconds is None:
            return None
        return self.usd_per_hour * seconds / 3600

    @property
    def projected_usd(self) -> Optional[float]:
        if not self.running:
            return self.cost_usd
        if self.usd_per_hour is None or self.elapsed_s is None or self.eta_s is None:
            return None
        return self.usd_per_hour * (self.elapsed_s + self.eta_s) / 3600


def job_status(aws: Aws, log_group: str, job: str, now: Optional[dt.datetime] = None) -> Status:
    desc = jobs.describe(aws, job)
    return Status(
        desc=desc,
        history=log_history(aws, log_group, job),
        plan=job_plan(aws, desc),
        now=now or dt.datetime.now(dt.timezone.utc),
    )


# ---------------------------------------------------------------------------------------
# List


@dataclass
class Row:
    desc: dict[str, Any]
    status: Status
    best_per: Optional[float]
    config: str


def _final(desc: dict[str, Any], name: str) -> Optional[float]:
    for m in desc.get("FinalMetricDataList", []) or []:
        if m.get("MetricName") == name:
            return float(m["Value"])
    return None


def list_rows(aws: Aws, log_group: str, summaries: list[dict[str, Any]], now: Optional[dt.datetime] = None,
              workers: int = 8) -> list[Row]:
    """One row per job (DescribeTrainingJob each, in parallel; a running job's best PER from its log)."""
    now = now or dt.datetime.now(dt.timezone.utc)

    def row(summary: dict[str, Any]) -> Row:
        desc = jobs.describe(aws, summary["TrainingJobName"])
        best = _final(desc, "best_val_PER")
        history = History()
        if desc.get("TrainingJobStatus") in ("InProgress", "Stopping") or best is None:
            history = log_history(aws, log_group, desc["TrainingJobName"])
            found = history.best_val()
            best = found["val_PER"] if found else best
        status = Status(desc=desc, history=history, plan=Plan(), now=now)
        return Row(desc=desc, status=status, best_per=best, config=_config_name(desc))

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(summaries)))) as pool:
        return list(pool.map(row, summaries))


def _config_name(desc: dict[str, Any]) -> str:
    """The config file (its overrides are in the config channel, a read per job: not shown)."""
    return (desc.get("HyperParameters") or {}).get("config_file") or "-"
