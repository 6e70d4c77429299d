"""End to end against moto: the synthesized CDK stack, then every command as a user types it."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest

from infra import outputs as keys
from trainer.config import DEMO_CONFIG

from tests.launcher.conftest import IMAGE_TAG, put_log, tar_gz

# moto deploys the synthesized template but skips what it cannot model (bucket policies).
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse")


def flat(out: str) -> str:
    return " ".join(out.split())


def submitted_job(out: str) -> str:
    return next(line.split()[1] for line in out.splitlines() if line.startswith("submitted "))


@pytest.fixture
def job(deployed, cli) -> str:
    code, out, err = cli("start", "--config", DEMO_CONFIG, "--num-training-batches", "50", "-y")
    assert code == 0, err
    return submitted_job(out)


def test_start_submits_the_job_the_stack_describes(deployed, job):
    desc = deployed.client("sagemaker").describe_training_job(TrainingJobName=job)
    out = deployed.outputs
    assert job.startswith(out[keys.JOB_NAME_PREFIX] + "-demo-")
    assert desc["AlgorithmSpecification"]["TrainingImage"] == out[keys.ECR_REPOSITORY_URI] + ":" + IMAGE_TAG
    assert desc["RoleArn"] == out[keys.EXECUTION_ROLE_ARN]
    assert desc["ResourceConfig"]["InstanceType"] == "ml.g5.2xlarge"
    assert desc["EnableManagedSpotTraining"] is True
    assert desc["CheckpointConfig"]["S3Uri"] == f"s3://{deployed.output_bucket}/checkpoints/{job}/"
    assert desc["StoppingCondition"] == {"MaxRuntimeInSeconds": 48 * 3600, "MaxWaitTimeInSeconds": 96 * 3600}
    assert desc["OutputDataConfig"]["S3OutputPath"] == f"s3://{deployed.output_bucket}/jobs/"
    assert desc["HyperParameters"] == {"config_file": "demo.yaml", "data_url": f"s3://{deployed.data_bucket}/data/"}
    overrides = deployed.client("s3").get_object(Bucket=deployed.output_bucket,
                                                 Key=f"jobs/{job}/input/config/overrides.json")["Body"].read()
    assert json.loads(overrides) == ["num_training_batches=50"]  # beside the config, not a hyperparameter


def test_start_uploads_the_config_channel(deployed, job):
    desc = deployed.client("sagemaker").describe_training_job(TrainingJobName=job)
    (channel,) = desc["InputDataConfig"]
    uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
    assert channel["ChannelName"] == "config"
    assert uri == f"s3://{deployed.output_bucket}/jobs/{job}/input/config/"
    body = deployed.client("s3").get_object(Bucket=deployed.output_bucket, Key=f"jobs/{job}/input/config/demo.yaml")
    assert body["Body"].read().decode() == DEMO_CONFIG.read_text()


def test_start_tags_the_job(deployed, job):
    arn = deployed.client("sagemaker").describe_training_job(TrainingJobName=job)["TrainingJobArn"]
    tags = {t["Key"]: t["Value"] for t in deployed.client("sagemaker").list_tags(ResourceArn=arn)["Tags"]}
    assert tags == {"project": "b2t", "b2t:config": "demo.yaml"}


def test_start_prints_cost_and_next_commands(deployed, cli):
    code, out, _ = cli("start", "--config", DEMO_CONFIG, "--instance-type", "ml.g4dn.xlarge", "--on-demand",
                       "--max-run", "2", "-y")
    assert code == 0
    assert "$0.736/h" in out and "at most $1.47" in out and "as of 2025-06" in out
    assert "python -m launcher logs " in out and "python -m launcher download " in out


def test_several_multi_gpu_instances_make_one_data_parallel_job(deployed, cli):
    code, out, err = cli("start", "--config", DEMO_CONFIG, "--instance-type", "ml.g5.12xlarge", "--instance-count", "2",
                         "--batch-size", "12", "--on-demand", "--max-run", "2", "-y")
    assert code == 0, err
    desc = deployed.client("sagemaker").describe_training_job(TrainingJobName=submitted_job(out))
    assert desc["ResourceConfig"]["InstanceType"] == "ml.g5.12xlarge" and desc["ResourceConfig"]["InstanceCount"] == 2
    text = flat(out)
    assert "2 × ml.g5.12xlarge (4 × A10G, 24 GB each)" in text
    assert "ranks: 8 (torchrun + DDP), 1-2 trials each of every global batch of 12" in text
    assert "$7.090/h × 2 = $14.180/h" in text and "at most $28.36" in text and "÷ 8 GPUs, ideal scaling" in text
    assert "does not split evenly over 8 ranks: shares of 1 and 2 trials" in text


def test_on_demand_has_no_max_wait(deployed, cli):
    code, out, _ = cli("start", "--config", DEMO_CONFIG, "--on-demand", "--max-run", "3", "-y")
    desc = deployed.client("sagemaker").describe_training_job(TrainingJobName=submitted_job(out))
    assert desc["EnableManagedSpotTraining"] is False
    assert desc["StoppingCondition"] == {"MaxRuntimeInSeconds": 10800}


def test_dry_run_prints_the_request_and_submits_nothing(deployed, cli):
    code, out, _ = cli("start", "--config", DEMO_CONFIG, "--dry-run")
    assert code == 0
    request = json.loads(out[out.index("{"):])
    assert request["TrainingJobName"].startswith("b2t-demo-")
    assert deployed.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []
    assert "Contents" not in deployed.client("s3").list_objects_v2(Bucket=deployed.output_bucket)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_yes_a_no_answer_submits_nothing(deployed, cli, monkeypatch):
    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    code, out, _ = cli("start", "--config", DEMO_CONFIG)
    assert code == 1 and "not submitted" in out
    assert deployed.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []


def test_status_shows_times_billing_and_metrics(deployed, job, cli):
    code, out, _ = cli("status", job)
    assert code == 0
    for label in ("state: Completed (Completed)", "created:", "billable:", "cost:", "metrics: train:progress=100"):
        assert label in flat(out)


def test_status_of_a_running_spot_job_reads_metrics_from_its_log(deployed, job, cli):
    fake = deployed.training_job(job)
    fake.training_job_status, fake.final_metric_data_list = "InProgress", []
    write_log(deployed, job, ["METRIC step=25 train_loss=3.5 lr=0.001", "METRIC step=99 val_loss=2.25 val_PER=0.61"])
    code, out, _ = cli("status", job.removeprefix("b2t-"))
    assert "state: InProgress" in flat(out) and "step: 100 / 50" in flat(out)
    assert "train (newest): step 25: train_loss=3.5 lr=0.001" in flat(out)
    assert "val (newest): step 99: val_loss=2.25 val_PER=0.61" in flat(out)


def test_status_of_an_ended_spot_job_shows_its_savings(deployed, job, cli):
    fake = deployed.training_job(job)
    fake.training_time_in_seconds, fake.billable_time_in_seconds = 1000, 300
    code, out, _ = cli("status", job)
    assert "spot savings: 70%" in flat(out) and "billable: 5m00s" in flat(out)
    assert "cost: $0.13 (billable time × $1.515/h on-demand" in flat(out)


def test_list_shows_this_projects_jobs_newest_first(deployed, job, cli):
    deployed.client("sagemaker").create_training_job(**foreign_job(deployed))
    code, out, _ = cli("list")
    assert code == 0
    assert job in out and "someone-else" not in out
    assert out.splitlines()[0].split() == ["JOB", "STATE", "INSTANCE", "SPOT", "STARTED", "DURATION", "COST", "BEST",
                                           "PER", "CONFIG"]


def write_log(deployed, job: str, lines: list[str]) -> None:
    put_log(deployed, job, lines)


def foreign_job(deployed) -> dict:
    return {
        "TrainingJobName": "someone-else-1",
        "AlgorithmSpecification": {"TrainingImage": "img:1", "TrainingInputMode": "File"},
        "RoleArn": deployed.outputs[keys.EXECUTION_ROLE_ARN],
        "OutputDataConfig": {"S3OutputPath": "s3://elsewhere/"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
    }


def test_logs_prints_the_jobs_cloudwatch_stream(deployed, job, cli):
    write_log(deployed, job, ["starting", "METRIC step=0 train_loss=4.0"])
    code, out, _ = cli("logs", job, "--no-timestamps")
    assert code == 0 and out.splitlines() == ["starting", "METRIC step=0 train_loss=4.0"]


def test_logs_follow_ends_with_the_job(deployed, job, cli):
    write_log(deployed, job, ["done"])
    code, out, _ = cli("logs", job, "--follow", "--poll", "0", "--no-timestamps")
    assert code == 0 and out.splitlines() == ["done", f"-- {job}: Completed"]


def test_download_extracts_model_and_metrics(deployed, job, cli, tmp_path):
    s3 = deployed.client("s3")
    s3.put_object(Bucket=deployed.output_bucket, Key=f"jobs/{job}/output/model.tar.gz",
                  Body=tar_gz({"best_model.pt": b"weights", "config.yaml": b"a: 1"}))
    s3.put_object(Bucket=deployed.output_bucket, Key=f"jobs/{job}/output/output.tar.gz",
                  Body=tar_gz({"metrics.jsonl": b'{"step": 1}\n'}))
    s3.put_object(Bucket=deployed.output_bucket, Key=f"checkpoints/{job}/last.pt", Body=b"ckpt")
    code, out, _ = cli("download", job, "--to", tmp_path, "--checkpoints")
    assert code == 0
    assert (tmp_path / job / "model" / "best_model.pt").read_bytes() == b"weights"
    assert (tmp_path / job / "output" / "metrics.jsonl").exists()
    assert (tmp_path / job / "checkpoints" / "last.pt").read_bytes() == b"ckpt"
    assert f"metrics: {tmp_path / job / 'output' / 'metrics.jsonl'}" in out


def test_upload_syncs_sessions_and_skips_unchanged(deployed, cli, tmp_path):
    from trainer.synthetic import SyntheticSpec, generate

    generate(tmp_path / "gen", SyntheticSpec(n_sessions=2, train_trials=2, val_trials=0, n_features=4))
    for session, made in zip(("t15.2025.01.01", "t15.2025.01.03"), sorted((tmp_path / "gen").iterdir())):
        (tmp_path / session).mkdir()
        (made / "data_train.hdf5").rename(tmp_path / session / "data_train.hdf5")
    import shutil

    shutil.rmtree(tmp_path / "gen")
    code, out, _ = cli("upload", tmp_path, "--prefix", "extra")
    assert code == 0 and "uploaded 2 file(s)" in out and "2 trial index(es) written beside them" in out
    s3 = deployed.client("s3")
    listed = {o["Key"]: o for o in s3.list_objects_v2(Bucket=deployed.data_bucket, Prefix="data/extra/")["Contents"]}
    data = ["data/extra/t15.2025.01.01/data_train.hdf5", "data/extra/t15.2025.01.03/data_train.hdf5"]
    assert sorted(listed) == sorted([*data, *(k + ".b2t-index.json" for k in data)])
    for key in data:  # each index names the version it describes and lists the file's trials
        side = json.loads(s3.get_object(Bucket=deployed.data_bucket, Key=key + ".b2t-index.json")["Body"].read())
        assert side["object"] == {"size": listed[key]["Size"], "etag": listed[key]["ETag"]}
        assert [t["key"] for t in side["index"]["trials"]] == ["trial_0000", "trial_0001"]
    code, out, _ = cli("upload", tmp_path, "--prefix", "extra")
    assert "uploaded 0 file(s), 0 B; 2 unchanged skipped; 0 trial index(es) written" in out


def test_resume_continues_from_the_same_checkpoints_and_config(deployed, job, cli):
    deployed.training_job(job).training_job_status = "Stopped"
    # A name of its own: the default (<prefix>-<config>-<UTC second>) repeats the first job's
    # when both are made within one second, and moto would overwrite the first job.
    code, out, err = cli("resume", job, "-y", "--job-name", "demo-resumed")
    assert code == 0, err
    new = submitted_job(out)
    assert new == "b2t-demo-resumed"
    sm = deployed.client("sagemaker")
    first, second = (sm.describe_training_job(TrainingJobName=j) for j in (job, new))
    assert new != job
    assert second["CheckpointConfig"] == first["CheckpointConfig"]
    assert second["HyperParameters"] == first["HyperParameters"]
    assert second["EnableManagedSpotTraining"] is True
    config = deployed.client("s3").get_object(Bucket=deployed.output_bucket, Key=f"jobs/{new}/input/config/demo.yaml")
    assert config["Body"].read().decode() == DEMO_CONFIG.read_text()
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=second["TrainingJobArn"])["Tags"]}
    assert tags["b2t:resumed-from"] == job


def test_resume_refuses_a_running_job(deployed, job, cli):
    deployed.training_job(job).training_job_status = "InProgress"
    code, _, err = cli("resume", job, "-y")
    assert code == 1 and "stop it first" in err


def test_stop_of_a_finished_job_changes_nothing(deployed, job, cli):
    code, out, _ = cli("stop", job)
    assert code == 0 and "already Completed; nothing to stop" in out


def test_stop_asks_sagemaker_to_stop_a_running_job(deployed, cli, monkeypatch):
    # moto has no StopTrainingJob: the SageMaker client is a botocore Stubber here.
    import boto3
    from botocore.stub import Stubber

    from launcher.aws import Aws

    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    stubber = Stubber(sagemaker)
    stubber.add_response("describe_training_job", running_description("b2t-run-1"), {"TrainingJobName": "b2t-run-1"})
    stubber.add_response("stop_training_job", {}, {"TrainingJobName": "b2t-run-1"})
    real_client = Aws.client
    monkeypatch.setattr(Aws, "client", lambda self, s: sagemaker if s == "sagemaker" else real_client(self, s))
    with stubber:
        code, out, _ = cli("stop", "run-1")
    stubber.assert_no_pending_responses()
    assert code == 0 and "stopping b2t-run-1 (it was InProgress)" in out and "resume b2t-run-1" in out


def running_description(name: str) -> dict:
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "TrainingJobName": name,
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}",
        "ModelArtifacts": {"S3ModelArtifacts": ""},
        "TrainingJobStatus": "InProgress",
        "SecondaryStatus": "Training",
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": now,
    }


def test_start_wait_follows_the_log_until_the_job_ends(deployed, cli):
    code, out, _ = cli("start", "--config", DEMO_CONFIG, "-y", "--wait")
    assert code == 0 and out.rstrip().endswith(f"-- {submitted_job(out)}: Completed")


def test_image_prints_the_push_commands_for_the_stacks_repository(deployed, cli):
    code, out, _ = cli("image", "--tag", "v2")
    uri = deployed.outputs[keys.ECR_REPOSITORY_URI]
    assert code == 0 and f"docker push {uri}:v2" in out and "docker login" in out
    code, out, _ = cli("image", "--list")
    assert IMAGE_TAG in out


def test_follow_picks_up_new_lines_until_the_job_ends(deployed, job):
    from launcher import jobs
    from launcher.aws import Aws

    fake = deployed.training_job(job)
    fake.training_job_status = "InProgress"
    write_log(deployed, job, ["METRIC step=0 train_loss=4.0"])
    group = deployed.outputs[keys.TRAINING_LOG_GROUP]

    def next_poll(_seconds):  # between polls the job logs one more line and ends
        deployed.client("logs").put_log_events(
            logGroupName=group, logStreamName=f"{job}/algo-1-1764400000",
            logEvents=[{"timestamp": int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000) + 10,
                        "message": "METRIC step=1 train_loss=3.0"}])
        fake.training_job_status = "Completed"

    lines = list(jobs.follow_logs(Aws(), group, job, follow=True, sleep=next_poll))
    assert lines == ["METRIC step=0 train_loss=4.0", "METRIC step=1 train_loss=3.0"]


def test_download_of_a_running_job_needs_checkpoints(deployed, job, cli, tmp_path):
    deployed.training_job(job).training_job_status = "InProgress"
    code, _, err = cli("download", job, "--to", tmp_path)
    assert code == 1 and "is InProgress" in err and "--checkpoints" in err
