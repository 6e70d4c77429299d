"""``python -m trainer``: train locally or inside a SageMaker training container.

See :mod:`trainer.environment` for where inputs and outputs go. Every failure (a bad config,
bad data, a bad command line, an unexpected error) ends the run with one line naming the problem
and, in a container, the same line in ``/opt/ml/output/failure``, which SageMaker shows as the
job's FailureReason; an unexpected error also prints its traceback to the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_STOPPED = 128 + signal.SIGTERM  # 143: stopped on request, checkpoint saved

log = logging.getLogger("trainer")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StopFlag:
    """Set by SIGTERM (SageMaker's stop / spot interruption, ~120 s grace) or SIGINT."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    def __call__(self) -> bool:
        return self.signal is not None

    def install(self) -> dict:
        """Handle SIGTERM and SIGINT; returns the previous handlers for :meth:`uninstall`."""
        return {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    @staticmethod
    def uninstall(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signal = signum
        log.warning("received %s: finishing the current batch, saving a checkpoint, then exiting",
                    signal.Signals(signum).name)


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT, stream=sys.stderr)


def log_to_file(output_dir: Path) -> logging.Handler:
    output_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(output_dir / "training_log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    return handler


def report_failure(reason: str, failure_file: Optional[Path]) -> None:
    """``reason`` on stderr (several config problems: one line each) and, in a container, as one
    line in the failure file (SageMaker's FailureReason)."""
    from .contract import one_line

    line = one_line(reason)
    print(reason.strip() or line, file=sys.stderr, flush=True)
    if failure_file is not None:
        try:
            failure_file.parent.mkdir(parents=True, exist_ok=True)
            failure_file.write_text(line + "\n")
        except OSError as e:  # best effort: the reason is on stderr already
            print(f"(could not write {failure_file}: {e.strerror})", file=sys.stderr)


def os_error_line(e: OSError) -> str:
    """``<path>: <reason>`` for an OSError about a path, e.g. an output folder that cannot be created."""
    reason = e.strerror or str(e) or type(e).__name__
    return f"{e.filename}: {reason}" if e.filename else reason


def run(argv: Sequence[str], env=os.environ) -> int:
    from .environment import (InvocationError, build_config, in_container, is_container_invocation, parse_cli,
                              spec_from_cli, spec_from_container)

    container = is_container_invocation(argv)
    if container and not in_container(env):
        configure_logging()
        command = " ".join(["python -m trainer", *argv])
        raise InvocationError(f"'{command}' runs a SageMaker job, but there is none here (no input/config under "
                              "/opt/ml or $B2T_OPT_ML); for a local run pass --config, --data and --output")
    args = None if container else parse_cli(argv)
    configure_logging(bool(args and args.verbose))
    spec = spec_from_container(env) if container else spec_from_cli(args)
    if spec.failure_file is not None:
        spec.failure_file.unlink(missing_ok=True)  # a stale reason from an earlier attempt
    for note in spec.notes:
        log.warning(note)
    cfg = build_config(spec)
    if container and not spec.dry_run:
        code = run_ranks_if_needed(env, spec.failure_file)
        if code is not None:
            return code
    log.info("config %s, data %s, output %s", spec.config_path, cfg.data_url, spec.paths.output_dir)
    if cfg.data_url.startswith("s3://"):
        log.info("S3 region %s", cfg.dataset.storage.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
                 or "not set: botocore's default chain")

    from .data import check_data
    from .checks import check_against_data

    summary = check_data(cfg)
    check_against_data(cfg, summary)
    if spec.dry_run:
        print(summary.format())
        print(f"dry run: config and data OK ({summary.n_train} train, {summary.n_val} validation trials)", flush=True)
        return EXIT_OK
    from .train import COMPLETED, EARLY_STOPPED, train

    from .checkpoint import output_lock
    from .distributed import ranks_from_env

    main_rank = ranks_from_env(env).is_main
    # one trainer per output folder; under torchrun rank 0 holds the lock and writes the outputs
    with output_lock(spec.paths.output_dir) if main_rank else contextlib.nullcontext():
        handler = log_to_file(spec.paths.output_dir) if main_rank else None
        stop = StopFlag()
        previous = stop.install()
        try:
            result = train(cfg, spec.paths, should_stop=stop, start_fresh=spec.start_fresh)
        finally:
            stop.uninstall(previous)
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()
    if result.status in (COMPLETED, EARLY_STOPPED) and not main_rank:
        return EXIT_OK
    if result.status in (COMPLETED, EARLY_STOPPED):
        print(f"done: {result.status} at step {result.step}, best val PER {result.best_val_PER:.4f}, "
              f"model {result.model_path}", flush=True)
        return EXIT_OK
    return EXIT_STOPPED


def run_ranks_if_needed(env, failure_file: Optional[Path]) -> Optional[int]:
    """In a job with several GPUs or hosts: run the ranks under torchrun (see :mod:`trainer.torchrun`)
    and return their exit status; None to train in this process."""
    from .environment import container_root
    from .torchrun import container_layout, run_ranks

    layout = container_layout(container_root(env), env)
    if layout is None:
        return None
    code = run_ranks(layout, env)
    if code not in (EXIT_OK, EXIT_STOPPED) and failure_file is not None and not failure_file.exists():
        report_failure(f"training error: torchrun exited with status {code} (the ranks' log has the reason)",
                       failure_file)
    return code


def main(argv: Optional[Sequence[str]] = None, env=os.environ) -> int:
    """Run, and turn every failure into an exit status and one line (also in the failure file in a
    container, whatever the invocation); unexpected errors also print their traceback to the log."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from .contract import failure_file_for

    failure_file = failure_file_for(env)
    try:
        return run(argv, env)
    except BaseException as e:  # noqa: BLE001 - every way out of a job ends in a status and a reason
        return failure_status(e, failure_file)


def failure_status(e: BaseException, failure_file: Optional[Path]) -> int:
    """The exit status for ``e``, after reporting it (see :func:`main`)."""
    if isinstance(e, SystemExit) and e.code in (0, None):  # --help
        return EXIT_OK
    if isinstance(e, KeyboardInterrupt):
        report_failure("interrupted", None)
        return 128 + signal.SIGINT
    try:
        status, line = _classify(e)
    except Exception:  # the trainer's own modules do not import: keep the original error
        status, line = None, None
    if line is None:  # a bug (or a broken install): full traceback for us, one line for the FailureReason
        traceback.print_exception(e)
        status, line = EXIT_FAILED, f"internal error: {type(e).__name__}: {e}"
    report_failure(line, failure_file)
    return status


def _classify(e: BaseException) -> tuple[Optional[int], Optional[str]]:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .environment import InvocationError
    from .train import TrainingError

    if isinstance(e, InvocationError):
        return EXIT_CONFIG, f"bad invocation: {e}"
    if isinstance(e, ConfigError):
        return EXIT_CONFIG, f"config error: {e}"
    if isinstance(e, DataError):
        return EXIT_DATA, f"data error: {e}"
    if isinstance(e, (CheckpointError, TrainingError)):
        return EXIT_FAILED, f"training error: {e}"
    if isinstance(e, OSError):  # a path the run was given cannot be created, read or written
        if e.filename is None:  # not about a path: keep the traceback, as for any unexpected error
            traceback.print_exception(e)
        return EXIT_FAILED, f"file error: {os_error_line(e)}"
    return None, None


if __name__ == "__main__":
    raise SystemExit(main())
