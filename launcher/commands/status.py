"""`status JOB`: state, step / total, ETA, times, cost so far and projected, newest and best metrics, locations."""

from __future__ import annotations

import argparse

from . import add_aws_args, connect, job_command_parser, job_name

EXAMPLES = """
python -m launcher status b2t-rnn-args-20261129-101500
python -m launcher status rnn-args-20261129-101500     # the stack's prefix may be left out
"""
TRAIN_SHOWN = ("train_loss", "lr", "grad_norm", "sec_per_batch")
VAL_SHOWN = ("val_loss", "val_PER", "val_seconds")


def add_parser(sub) -> None:
    p = job_command_parser(sub, "status", "show a training job's state, progress, ETA, cost and newest metrics",
                           EXAMPLES)
    add_aws_args(p)
    p.set_defaults(handler=run)


def rows(st) -> list[tuple[str, str]]:
    """The lines of ``status`` for a :class:`launcher.watch.Status`."""
    from launcher import ui

    d, h = st.desc, st.history
    rc = d.get("ResourceConfig", {})
    out = [
        ("job", st.name),
        ("state", f"{st.state} ({d.get('SecondaryStatus') or '-'})"),
        ("instance", f"{rc.get('InstanceCount', 1)} × {rc.get('InstanceType', '?')} "
                     f"({'managed spot' if st.spot else 'on-demand'})"),
        ("config", st.plan.config_file or "-"),
    ]
    done, total = h.steps_done, st.plan.total
    if done is not None or total is not None:
        pct = f" ({100 * done / total:.0f}%)" if done is not None and total else ""
        out.append(("step", f"{done if done is not None else '-'} / {total or '?'}{pct}"))
    if st.running:
        eta = st.eta_s
        out.append(("ETA", "- (no training metrics yet)" if eta is None else
                    f"{ui.duration(eta)} (at {h.sec_per_batch():.3g} s/batch, validations included)"))
    out += [
        ("created", ui.when(d.get("CreationTime"))),
        ("started", ui.when(d.get("TrainingStartTime"))),
        ("ended", ui.when(d.get("TrainingEndTime"))),
        ("elapsed", ui.duration(st.elapsed_s)),
        ("billable", ui.duration(st.billable_s) if st.billable_s is not None else
         "- (SageMaker reports it when the job ends)"),
    ]
    if st.spot_savings_pct is not None:
        out.append(("spot savings", f"{st.spot_savings_pct:.0f}%"))
    out.append(_cost_row(st))
    if d.get("FailureReason"):
        out.append(("failure", d["FailureReason"]))
    out += _metric_rows(st)
    out += _location_rows(d)
    return out


def _cost_row(st) -> tuple[str, str]:
    from launcher import costs, ui

    if st.usd_per_hour is None:
        return "cost", f"unknown: {st.desc.get('ResourceConfig', {}).get('InstanceType')} is not in the price table"
    rate = f"${st.usd_per_hour:.3f}/h on-demand, {costs.price_table().region} prices of {costs.price_table().as_of}"
    if not st.running:
        basis = "billable time" if st.billable_s is not None else "training time"
        return "cost", f"{ui.money(st.cost_usd)} ({basis} × {rate})"
    bound = "at most " if st.spot else ""
    projected = f"; projected {bound}{ui.money(st.projected_usd)} at the ETA" if st.projected_usd is not None else ""
    return "cost", f"{bound}{ui.money(st.cost_usd)} so far{projected} ({rate})"


def _metric_rows(st) -> list[tuple[str, str]]:
    from launcher import ui

    h, out = st.history, []
    train, val, best = h.latest("train"), h.latest("val"), h.best_val()
    if train:
        out.append(("train (newest)", f"step {train['step']}: " + _values(train, TRAIN_SHOWN)))
    if val:
        out.append(("val (newest)", f"step {val['step']}: " + _values(val, VAL_SHOWN)))
    if best:
        out.append(("best val PER", f"{ui.number(best['val_PER'])} at step {best['step']}"))
    if not (train or val):
        final = {m["MetricName"]: m["Value"] for m in st.desc.get("FinalMetricDataList", []) or []}
        out.append(("metrics", ", ".join(f"{k}={v:g}" for k, v in final.items()) or "none logged yet"))
    return out


def _values(record: dict, names: tuple[str, ...]) -> str:
    return " ".join(f"{n}={record[n]:.4g}" for n in names if isinstance(record.get(n), float))


def _location_rows(d: dict) -> list[tuple[str, str]]:
    out = []
    if d.get("CheckpointConfig", {}).get("S3Uri"):
        out.append(("checkpoints", d["CheckpointConfig"]["S3Uri"]))
    model = d.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if model:
        out.append(("model", model + ("" if d.get("TrainingJobStatus") == "Completed" else " (written when it ends)")))
    if d.get("TensorBoardOutputConfig", {}).get("S3OutputPath"):
        out.append(("tensorboard", f"tensorboard --logdir {d['TensorBoardOutputConfig']['S3OutputPath']}"))
    return out


def run(args: argparse.Namespace) -> int:
    from launcher import jobs, ui, watch

    aws, outputs = connect(args)
    st = watch.job_status(aws, jobs.log_group_of(outputs), job_name(args, outputs))
    print(ui.key_values(rows(st)))
    return 0
