"""The README's table "What is checked before a job is paid for": each repro, as a user types it,
and the one line it gets; nothing submitted, nothing uploaded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import outputs as keys
from trainer.config import DEMO_CONFIG

from tests.launcher.conftest import DEMO_SESSIONS
from tests.launcher.test_errors import assert_one_line_error

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def refused(cli):
    """A `start` that must end with one line naming the problem (no traceback)."""

    def run(*args: str, needles: tuple[str, ...], code: int = 0) -> str:
        rc, _, err = cli(*args)
        assert_one_line_error(rc, err, *needles)
        if code:
            assert rc == code
        return err

    return run


def start(*extra: str) -> tuple[str, ...]:
    return ("start", "--config", str(DEMO_CONFIG), "--dry-run", *extra)


def nothing_written(deployed) -> bool:
    s3 = deployed.client("s3")
    return ("Contents" not in s3.list_objects_v2(Bucket=deployed.output_bucket)
            and deployed.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == [])


# --- flags, before any AWS call (aws_env: no stack deployed, so an AWS call would say "stack not found")

@pytest.mark.parametrize("extra,needle", [
    (("--instance-type", "ml.foo.bar"), "--instance-type 'ml.foo.bar' is not a SageMaker training instance type"),
    (("--instance-type", "ml.g5.2xlarg"), "did you mean ml.g5.2xlarge"),
    (("--volume-gb", "0"), "--volume-gb: must be a whole number above 0, got 0"),
    (("--volume-gb", "100000"), "--volume-gb must be between 1 and 16384 GB, got 100000"),
    (("--on-demand", "--max-wait", "5"), "--max-wait applies to managed spot only"),
    (("--max-run", "nan"), "--max-run: must be a number of 0 or more, got nan"),
    (("--image-tag", "bad tag!"), "--image-tag 'bad tag!' is not a valid image tag"),
    (("--batch-size", "1000000000"), "dataset.batch_size: 1000000000 trials, even were each only one patch (4 bins) long, need at least"),
    (("--set", "dataset.must_include_days=[0, 0]"), "dataset.must_include_days: [0, 0] names one session twice"),
    (("--set", "init_from_checkpoint=true", "--set", "init_checkpoint_path=/nowhere/model.pt"),
     "init_checkpoint_path: /nowhere/model.pt is a path on this machine, which the job cannot read"),
])
def test_flag_and_config_checks_need_no_aws(aws_env, refused, extra, needle):
    refused(*start(*extra), needles=(needle,))


def test_batch_memory_names_the_gpu(aws_env, refused):
    refused(*start("--batch-size", "1000000000"), needles=("GiB of one A10G of ml.g5.2xlarge",))


def test_duplicate_yaml_key_is_refused(aws_env, refused, tmp_path):
    config = tmp_path / "twice.yaml"
    config.write_text(DEMO_CONFIG.read_text() + "\nnum_training_batches: 10\nnum_training_batches: 20\n")
    refused("start", "--config", str(config), "--dry-run",
            needles=("line", "key 'num_training_batches' is given twice (also on line"), code=2)


def test_binary_config_is_one_line(aws_env, refused, tmp_path):
    config = tmp_path / "model.pt"
    config.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j")
    refused("start", "--config", str(config), needles=("model.pt: not a YAML text file",), code=2)


def test_yaml_11_float_is_accepted(deployed, cli, tmp_path):
    import re

    config = tmp_path / "lr.yaml"
    config.write_text(re.sub(r"(?m)^lr_max: .*$", "lr_max: 5e-3", DEMO_CONFIG.read_text()))
    assert "lr_max: 5e-3" in config.read_text()
    code, _, err = cli("start", "--config", str(config), "--set", "lr_min=1e-5", "--dry-run")
    assert code == 0, err


def test_local_init_checkpoint_must_exist_in_local_mode(refused, tmp_path):
    refused("start", "--local", "--dry-run", "--runs-dir", str(tmp_path), "--set", "init_from_checkpoint=true",
            "--set", f"init_checkpoint_path={tmp_path / 'missing.pt'}",
            needles=(f"init_checkpoint_path: no such file: {tmp_path / 'missing.pt'}",))


# --- against the stack (moto)

def test_init_checkpoint_in_s3_must_exist(deployed, refused):
    url = f"s3://{deployed.output_bucket}/checkpoints/b2t-old/checkpoint_00000100.pt"
    refused(*start("--set", "init_from_checkpoint=true", "--set", f"init_checkpoint_path={url}"),
            needles=(f"init_checkpoint_path: no object at {url}",))
    assert nothing_written(deployed)


def test_validation_probability_all_zero_is_refused(deployed, refused):
    refused(*start("--set", "dataset.dataset_probability_val=[0, 0, 0, 0]"),
            needles=("dataset.dataset_probability_val: is 0 for every session: validation would be empty",))


def test_no_validation_file_anywhere_is_refused(deployed, refused):
    s3 = deployed.client("s3")
    for session in DEMO_SESSIONS:
        s3.delete_object(Bucket=deployed.data_bucket, Key=f"data/{session}/data_val.hdf5")
    refused(*start(), needles=("dataset.sessions: no session with dataset_probability_val above 0 has validation "
                               "trials (data_val.hdf5) under s3://",))


def test_run_estimated_past_max_run_is_refused_unless_raised_or_accepted(deployed, cli, refused):
    refused(*start("--num-training-batches", "200000", "--max-run", "24"),
            needles=("the run is estimated at", "past --max-run 24 h", "--accept-cut"))
    code, out, err = cli(*start("--num-training-batches", "200000", "--max-run", "24", "--accept-cut"))
    assert code == 0, err
    flat = " ".join(out.split())
    assert "for the whole run, an estimated" in flat and "--max-run 24 h stops it before its last batch" in flat
    code, out, err = cli(*start("--num-training-batches", "200000", "--max-run", "40"))
    assert code == 0, err
    assert nothing_written(deployed)


def test_image_tag_with_bad_characters_is_refused(deployed, refused):
    refused("image", "--tag", "bad tag!", needles=("--tag 'bad tag!' is not a valid image tag",))


# --- generic CLI errors

def test_list_zero_and_negative_poll_are_one_line(deployed, refused):
    refused("list", "-n", "0", needles=("-n/--max: must be a whole number above 0, got 0",), code=2)
    refused("logs", "b2t-x", "-f", "--poll", "-1", needles=("--poll: must be a number of 0 or more, got -1",), code=2)


def test_unknown_region_is_one_line_before_any_call(aws_env, refused):
    refused("list", "--region", "moon-1", needles=("region 'moon-1' is not an AWS region name",), code=2)


def test_unreachable_endpoint_fails_fast_naming_it(aws_env, refused, monkeypatch):
    from launcher.aws import CONNECT_TIMEOUT_S, MAX_ATTEMPTS, Aws

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    refused("list", needles=("reading stack B2tSageMaker: cannot reach http://127.0.0.1:9/",))
    config = Aws().client("sagemaker").meta.config
    assert (config.connect_timeout, config.retries["total_max_attempts"]) == (CONNECT_TIMEOUT_S, MAX_ATTEMPTS) == (3, 3)


def test_closed_pipe_exits_quietly(deployed):
    logs = deployed.client("logs")
    group = deployed.outputs[keys.TRAINING_LOG_GROUP]
    code = subprocess.run([sys.executable, "-m", "launcher", "start", "--config", str(DEMO_CONFIG), "-y",
                           "--job-name", "pipe"], cwd=ROOT, env=_env(deployed), capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    logs.create_log_stream(logGroupName=group, logStreamName="b2t-pipe/algo-1-1")
    now_ms = int(time.time() * 1000) - 10_000
    events = [{"timestamp": now_ms + i, "message": f"line {i} " + "x" * 200} for i in range(5000)]
    logs.put_log_events(logGroupName=group, logStreamName="b2t-pipe/algo-1-1", logEvents=events)
    proc = subprocess.run(f"{sys.executable} -m launcher logs pipe | head -1", shell=True, cwd=ROOT,
                          env=_env(deployed), capture_output=True, text=True)
    assert proc.stdout.count("\n") == 1 and " line 0 " in proc.stdout
    assert proc.stderr == ""


def _env(deployed) -> dict[str, str]:
    return {**os.environ, "AWS_ENDPOINT_URL": deployed.server.url, "PYTHONPATH": str(ROOT)}


def test_every_config_named_in_the_help_exists():
    import re

    from launcher.cli import COMMANDS, build_parser
    from trainer.config import CONFIG_DIR

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    named = {m for name in COMMANDS for m in re.findall(r"--config (\S+\.yaml)", sub.choices[name].format_help())}
    assert "rnn_args_diphone_sagemaker.yaml" in named  # `upload -h` once named a config that does not exist
    assert all((CONFIG_DIR / name).is_file() for name in named), named
