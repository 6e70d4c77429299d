"""Every user error: one readable line on stderr, a non-zero exit, nothing submitted."""

from __future__ import annotations

import copy
import io

import pytest

from infra import outputs as keys
from trainer.config import DEMO_CONFIG

from tests.launcher.conftest import deploy

# moto deploys the synthesized template but skips what it cannot model (bucket policies).
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse")


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0]


def no_jobs(server) -> bool:
    return server.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []


def start(cli, *extra):
    return cli("start", "--config", DEMO_CONFIG, "-y", *extra)


def test_missing_stack(aws_env, cli):
    code, _, err = start(cli)
    assert_one_line_error(code, err, "stack 'B2tSageMaker' not found in us-east-1", "--stack")
    assert no_jobs(aws_env)


def test_missing_stack_by_name(deployed, cli):
    code, _, err = cli("list", "--stack", "Other")
    assert_one_line_error(code, err, "stack 'Other' not found")


def test_missing_output_key(aws_env, stack_template, cli):
    template = copy.deepcopy(stack_template)
    del template["Outputs"][keys.DATA_PREFIX]
    deploy(aws_env, template)
    code, _, err = start(cli)
    assert_one_line_error(code, err, f"lacks output {keys.DATA_PREFIX}", "redeploy")
    assert no_jobs(aws_env)


def test_no_credentials(deployed, cli, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var)
    code, _, err = start(cli)
    assert_one_line_error(code, err, "no AWS credentials found", "--local")
    assert no_jobs(deployed.server)


def test_region_mismatch_with_the_stack(aws_env, stack_template, cli):
    template = copy.deepcopy(stack_template)
    template["Outputs"][keys.REGION]["Value"] = "eu-west-1"
    deploy(aws_env, template)
    code, _, err = start(cli)
    assert_one_line_error(code, err, "is in eu-west-1 but the launcher is using us-east-1", "--region eu-west-1")
    assert no_jobs(aws_env)


def test_stack_in_another_region_is_not_found_here(deployed, cli):
    code, _, err = start(cli, "--region", "eu-west-1")
    assert_one_line_error(code, err, "not found in eu-west-1", "--region")


def test_image_tag_not_pushed(deployed, cli):
    code, _, err = start(cli, "--image-tag", "v9")
    assert_one_line_error(code, err, "image tag 'v9' is not in ECR repository 'b2t-training'")
    assert no_jobs(deployed.server)


def test_missing_sessions_are_listed(deployed, cli):
    deployed.client("s3").delete_object(Bucket=deployed.data_bucket, Key="data/t15.2023.08.13/data_train.hdf5")
    deployed.client("s3").delete_object(Bucket=deployed.data_bucket, Key="data/t15.2023.08.17/data_train.hdf5")
    code, _, err = start(cli)
    assert_one_line_error(code, err, "2 configured sessions missing", "t15.2023.08.13, t15.2023.08.17", "upload")
    assert no_jobs(deployed.server)


def test_sessions_under_another_prefix_are_missing(deployed, cli):
    code, _, err = start(cli, "--data-prefix", "diphone")
    assert_one_line_error(code, err, "4 configured sessions missing", "/data/diphone/")


@pytest.mark.parametrize("command", ["status", "logs", "stop", "download", "resume"])
def test_unknown_job(deployed, cli, command):
    code, _, err = cli(command, "b2t-nope")
    assert_one_line_error(code, err, "training job 'b2t-nope' not found", "list")


class NoAwsAllowed:
    def __init__(self, *args, **kwargs):
        raise AssertionError("an AWS session was opened before the config was validated")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "model.n_units=0"], "config: model.n_units: Input should be greater than 0"),
        (["--set", "dataset.sesions=[]"], "config: dataset.sesions: unknown key"),
        (["--batch-size", "2"], "config: dataset.batch_size: 2 is smaller than days_per_batch 4"),
    ],
)
def test_bad_config_fails_before_any_aws_call(deployed, cli, monkeypatch, args, needle):
    monkeypatch.setattr("launcher.aws.Aws", NoAwsAllowed)
    code, _, err = start(cli, *args)
    assert code == 2
    assert_one_line_error(code, err, needle)
    assert no_jobs(deployed.server)


@pytest.mark.parametrize("local", [(), ("--local", "--dry-run")])
def test_more_ranks_than_trials_per_batch_is_refused_before_any_aws_call(deployed, cli, monkeypatch, local):
    monkeypatch.setattr("launcher.aws.Aws", NoAwsAllowed)
    code, _, err = start(cli, "--instance-count", "2", "--instance-type", "ml.g5.48xlarge", "--batch-size", "8", *local)
    assert code == 2
    assert_one_line_error(code, err, "config: dataset.batch_size: 8 is less than the 16 training ranks of "
                                     "2 × ml.g5.48xlarge: each rank needs at least one trial of every batch")
    assert no_jobs(deployed.server)


def test_ranks_outside_local_mode_are_refused(deployed, cli, monkeypatch):
    monkeypatch.setattr("launcher.aws.Aws", NoAwsAllowed)
    code, _, err = start(cli, "--ranks", "2")
    assert_one_line_error(code, err, "--ranks is for --local; a job's ranks are its instances' GPUs")


def test_missing_config_file(aws_env, cli, tmp_path, monkeypatch):
    monkeypatch.setattr("launcher.aws.Aws", NoAwsAllowed)
    code, _, err = cli("start", "--config", tmp_path / "nope.yaml", "-y")
    assert_one_line_error(code, err, "config file not found")


def test_spot_without_checkpoints_is_refused(deployed, cli):
    code, _, err = start(cli, "--no-checkpoints")
    assert_one_line_error(code, err, "managed spot needs checkpoints", "--on-demand")
    assert no_jobs(deployed.server)


def test_max_wait_below_max_run_is_refused(deployed, cli):
    code, _, err = start(cli, "--max-run", "10", "--max-wait", "5")
    assert_one_line_error(code, err, "MaxWaitTime > MaxRuntime")


def test_upload_of_a_folder_without_sessions(deployed, cli, tmp_path):
    code, _, err = cli("upload", tmp_path)
    assert_one_line_error(code, err, "holds no <session>/data_train.hdf5 or data_val.hdf5 files")


def test_unreachable_endpoint(aws_env, cli, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: connection refused
    code, _, err = cli("list")
    assert_one_line_error(code, err, "reading stack B2tSageMaker: cannot reach http://127.0.0.1:9")


# Rejected credentials (InvalidClientTokenId, SignatureDoesNotMatch, ExpiredToken): test_auth_errors.py


@pytest.mark.parametrize("name", ["bad_name!", "a" * 70])
def test_invalid_job_name_fails_before_any_aws_call(deployed, cli, monkeypatch, name):
    monkeypatch.setattr("launcher.aws.Aws", NoAwsAllowed)
    code, _, err = start(cli, "--job-name", name)
    assert code == 2
    assert_one_line_error(code, err, "is not valid: letters, digits and hyphens, at most 63 characters")
    assert no_jobs(deployed.server)


@pytest.mark.parametrize("hours,needle", [("0", "--max-run must be between"),
                                          ("-1", "--max-run: must be a number of 0 or more")])
def test_resume_checks_max_run_too(deployed, cli, hours, needle):
    code, out, err = start(cli)
    job = next(line.split()[1] for line in out.splitlines() if line.startswith("submitted "))
    code, _, err = cli("resume", job, "--max-run", hours, "-y")
    assert code == 2
    assert_one_line_error(code, err, needle)
    assert len(deployed.client("sagemaker").list_training_jobs()["TrainingJobSummaries"]) == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_start_without_yes_off_a_terminal_is_refused(deployed, cli, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # piped: not a terminal
    code, out, err = cli("start", "--config", DEMO_CONFIG)
    assert code == 2
    assert_one_line_error(code, err, "stdin is not a terminal", "pass -y")
    assert no_jobs(deployed.server)


def test_ctrl_c_at_the_prompt_exits_130_quietly(deployed, cli, monkeypatch):
    class Interrupted(_Terminal):
        def readline(self, *_args):
            raise KeyboardInterrupt

    monkeypatch.setattr("sys.stdin", Interrupted())
    code, out, err = cli("start", "--config", DEMO_CONFIG)
    assert code == 130
    assert err == "interrupted\n" and out.endswith("[y/N] \n")
    assert no_jobs(deployed.server)


def test_download_into_a_file_is_refused(deployed, cli, tmp_path):
    target = tmp_path / "taken"
    target.write_text("")
    code, _, err = cli("download", "some-job", "--to", target)
    assert_one_line_error(code, err, f"--to {target} is a file, not a folder")


def test_an_unwritable_local_path_is_one_line(deployed, cli, tmp_path, monkeypatch):
    def unwritable(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "runs"))

    monkeypatch.setattr("launcher.jobs.download", unwritable)
    code, _, err = cli("download", "some-job", "--to", tmp_path / "runs")
    assert_one_line_error(code, err, f"{tmp_path / 'runs'}: Permission denied")


def test_logs_of_a_job_that_logged_nothing_yet(deployed, cli):
    code, out, _ = start(cli)
    job = next(line.split()[1] for line in out.splitlines() if line.startswith("submitted "))
    code, out, err = cli("logs", job)
    assert code == 0 and out == ""
    assert "has logged nothing yet" in err and "--follow" in err


def test_aws_region_variable_is_honoured(monkeypatch):
    from launcher.aws import Aws

    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert Aws().region == "eu-west-1"
