"""The request builder (pure), its offline validation, and the trainer's metric regexes."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

# moto deploys the synthesized template but skips what it cannot model (bucket policies).
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse")

from infra import outputs as keys
from launcher import instances
from launcher.costs import price_table
from launcher.errors import InvalidRequest, UsageError
from launcher.request import (
    DEFAULT_INSTANCE_TYPE,
    OVERRIDES_FILE,
    JobSpec,
    build_training_job_request,
    channel_files,
    make_job_name,
    metric_definitions,
    qualify_job_name,
    validate_request,
)
from launcher.stack import placeholder_outputs

KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/abc"


@pytest.fixture
def outputs():
    return placeholder_outputs()


def spec(**kw):
    return JobSpec(**{"job_name": "b2t-demo-1", "config_file": "demo.yaml", "image_tag": "3f2a9c1b7d4e", **kw})


def build(outputs, **kw):
    return build_training_job_request(spec(**kw), outputs)


def test_request_passes_botocores_model(outputs):
    validate_request(build(outputs, overrides=("num_training_batches=10",)))


def test_validation_catches_unknown_keys_and_non_string_hyperparameters(outputs):
    request = build(outputs)
    request["HyperParameters"]["epochs"] = 5
    request["Bogus"] = 1
    with pytest.raises(InvalidRequest, match=r"Unknown parameter in input: \"Bogus\".*\(and 1 more\)"):
        validate_request(request)


def test_validation_catches_a_bad_job_name(outputs):
    request = build(outputs)
    request["TrainingJobName"] = "b2t_demo"
    with pytest.raises(InvalidRequest, match="pattern"):
        validate_request(request)


def test_config_and_overrides_travel_in_the_config_channel(outputs):
    overrides = ("lr_max=0.004", "dataset.sessions=[a, b]")
    request = build(outputs, overrides=overrides)
    assert set(request["HyperParameters"]) == {"config_file", "data_url"}  # nothing unbounded
    files = channel_files(spec(overrides=overrides), "seed: 1\n")
    assert files == {"demo.yaml": "seed: 1\n", OVERRIDES_FILE: json.dumps(list(overrides)) + "\n"}
    assert request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == (
        "s3://b2t-local-output/jobs/b2t-demo-1/input/config/"
    )
    assert request["HyperParameters"]["data_url"] == "s3://b2t-local-data/data/"


def test_data_sub_prefix(outputs):
    assert build(outputs, data_sub_prefix="/diphone/")["HyperParameters"]["data_url"] == (
        "s3://b2t-local-data/data/diphone/"
    )


def test_spot_is_the_default_with_checkpoints_and_max_wait(outputs):
    request = build(outputs, max_run_hours=5)
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"] == {
        "S3Uri": "s3://b2t-local-output/checkpoints/b2t-demo-1/",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 18000, "MaxWaitTimeInSeconds": 36000}


def test_tensorboard_files_go_to_the_jobs_output_prefix(outputs):
    request = build(outputs)
    assert request["TensorBoardOutputConfig"] == {
        "S3OutputPath": f"s3://{outputs.output_bucket}/jobs/{request['TrainingJobName']}/tensorboard/",
        "LocalPath": "/opt/ml/output/tensorboard",
    }


def test_spot_without_checkpoints_is_refused(outputs):
    with pytest.raises(UsageError, match="managed spot needs checkpoints"):
        build(outputs, checkpoints=False)


def test_instance_count(outputs):
    assert build(outputs)["ResourceConfig"]["InstanceCount"] == 1
    assert build(outputs, instance_count=3)["ResourceConfig"]["InstanceCount"] == 3
    with pytest.raises(UsageError, match="^--instance-count must be at least 1"):
        build(outputs, instance_count=0)


def test_the_image_is_the_tag_in_the_stacks_repository(outputs):
    assert build(outputs)["AlgorithmSpecification"]["TrainingImage"] == (
        "000000000000.dkr.ecr.us-east-1.amazonaws.com/b2t-training:3f2a9c1b7d4e"
    )


def test_on_demand_without_checkpoints(outputs):
    request = build(outputs, spot=False, checkpoints=False)
    assert "CheckpointConfig" not in request and "MaxWaitTimeInSeconds" not in request["StoppingCondition"]


# Every instance type the launcher prices (launcher/data/prices.json), suggests (README, the
# default) or that botocore lists, with the documented rule ("ResourceConfig", API reference):
# no VolumeKmsKeyId for types with local NVMe storage; the output key whenever there is a key.
SUGGESTED = {DEFAULT_INSTANCE_TYPE, "ml.g4dn.xlarge", "ml.g5.2xlarge"}
LOCAL_STORAGE_EXPECTED = {  # written out, not read from the table under test
    "ml.g4dn.xlarge", "ml.g4dn.2xlarge", "ml.g4dn.4xlarge", "ml.g5.xlarge", "ml.g5.2xlarge", "ml.g5.4xlarge",
    "ml.g5.12xlarge", "ml.g6.xlarge", "ml.g6.2xlarge", "ml.g6.4xlarge", "ml.g6e.xlarge", "ml.g6e.2xlarge",
    "ml.p4d.24xlarge",
}
EBS_ONLY_EXPECTED = {"ml.p3.2xlarge", "ml.p3.8xlarge", "ml.m5.xlarge", "ml.c5.2xlarge"}
INSTANCE_CASES = sorted(SUGGESTED | set(price_table().instances) | EBS_ONLY_EXPECTED)


@pytest.mark.parametrize("key", [None, KEY_ARN], ids=["no-key", "key"])
@pytest.mark.parametrize("instance_type", INSTANCE_CASES)
def test_volume_key_follows_the_instance_storage_rule(outputs, instance_type, key):
    from dataclasses import replace

    assert instance_type in LOCAL_STORAGE_EXPECTED | EBS_ONLY_EXPECTED, "classify the new type above"
    request = build(replace(outputs, kms_key_arn=key), instance_type=instance_type, volume_gb=50)
    validate_request(request)
    volume_key = request["ResourceConfig"].get("VolumeKmsKeyId")
    if key is None:
        assert volume_key is None and "KmsKeyId" not in request["OutputDataConfig"]
    elif instance_type in LOCAL_STORAGE_EXPECTED:
        assert volume_key is None and request["OutputDataConfig"]["KmsKeyId"] == key
    else:
        assert volume_key == key and request["OutputDataConfig"]["KmsKeyId"] == key


def test_every_sagemaker_training_family_is_in_the_storage_table():
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    families = {t.rsplit(".", 1)[0] for t in model.shape_for("TrainingInstanceType").enum}
    table = instances.load()
    assert families <= table.instance_storage | table.ebs_only
    assert not table.instance_storage & table.ebs_only


def test_volume_size_above_the_local_storage_is_refused(outputs):
    with pytest.raises(UsageError, match=r"^--volume-gb 200: ml.g4dn.xlarge has 125 GB of local storage"):
        build(outputs, instance_type="ml.g4dn.xlarge", volume_gb=200)


def test_retry_strategy_and_data_cache_on_the_training_volume(outputs):
    request = build(outputs)
    assert request["RetryStrategy"] == {"MaximumRetryAttempts": 2}
    assert request["Environment"]["B2T_DATA_CACHE_DIR"] == "/opt/ml/input/data/b2t-cache"
    assert not request["Environment"]["B2T_DATA_CACHE_DIR"].startswith("/tmp")


# --- request limits: each fails in validate_request, i.e. inside plan(), before any upload ------------


def one_line(error: Exception) -> str:
    text = str(error)
    assert "\n" not in text
    return text


def test_hyperparameter_value_over_2500_characters(outputs):
    request = build(outputs, data_sub_prefix="x" * 2600)
    with pytest.raises(InvalidRequest) as caught:
        validate_request(request)
    assert one_line(caught.value).startswith("HyperParameters['data_url']: 2,6")
    assert "more than SageMaker's 2,500 (from --data-prefix)" in str(caught.value)


def test_many_overrides_no_longer_hit_the_hyperparameter_limit(outputs):
    overrides = tuple(f"dataset.bad_trials_dict.s{i}={{1: [1, 2, 3]}}" for i in range(200))
    assert len(json.dumps(overrides)) > 2500
    validate_request(build(outputs, overrides=overrides))


@pytest.mark.parametrize("config_file", ["rnn args (1).yaml", "rnn#2.yaml"])
def test_tag_value_pattern(outputs, config_file):
    with pytest.raises(InvalidRequest) as caught:
        validate_request(build(outputs, config_file=config_file))
    message = one_line(caught.value)
    assert message.startswith(f"Tags[b2t:config].Value: {config_file!r} does not match SageMaker's pattern")
    assert message.endswith("(from --config (its file name is tagged))")


def test_tag_value_pattern_accepts_unicode_letters(outputs):
    validate_request(build(outputs, config_file="réglages_ü.yaml"))


def test_tag_value_length(outputs):
    with pytest.raises(InvalidRequest, match=r"^Tags\[b2t:config\]\.Value: 300 characters, more than SageMaker's 256"):
        validate_request(build(outputs, config_file="c" * 295 + ".yaml"))


@pytest.mark.parametrize("wait_hours", [5, 4])
def test_max_wait_must_be_longer_than_max_run(outputs, wait_hours):
    with pytest.raises(UsageError, match=r"^--max-wait must be longer than --max-run"):
        build(outputs, max_run_hours=5, max_wait_hours=wait_hours)
    build(outputs, max_run_hours=5, max_wait_hours=5.01)


def test_job_name_limit(outputs):
    request = build(outputs)
    request["TrainingJobName"] = "b2t-" + "x" * 60  # 64 characters: the pattern alone lets it through
    with pytest.raises(InvalidRequest, match=r"^TrainingJobName: 64 characters, more than SageMaker's 63 \(from --job-name\)$"):
        validate_request(request)
    with pytest.raises(UsageError, match="is not valid"):
        qualify_job_name("x" * 60, "b2t")


def test_job_names_fit_sagemakers_pattern():
    now = dt.datetime(2026, 11, 29, 10, 15, 0, tzinfo=dt.timezone.utc)
    assert make_job_name("b2t", "rnn_args.yaml", now) == "b2t-rnn-args-20261129-101500"
    long = make_job_name("b2t", "x" * 200 + ".yaml", now)
    assert len(long) <= 63 and long.endswith("-20261129-101500")
    assert qualify_job_name("my-run", "b2t") == "b2t-my-run"
    assert qualify_job_name("b2t-my-run", "b2t") == "b2t-my-run"
    with pytest.raises(UsageError):
        qualify_job_name("my_run", "b2t")


def test_metric_definitions_come_from_the_trainer(outputs):
    from trainer import metrics

    assert build(outputs)["AlgorithmSpecification"]["MetricDefinitions"] == metrics.metric_definitions()


def test_a_diphone_job_also_charts_alpha_and_der(outputs):
    def names(**kw):
        return {d["Name"] for d in build(outputs, **kw)["AlgorithmSpecification"]["MetricDefinitions"]}

    assert {"alpha", "val_DER"} <= names(diphone=True)
    assert not {"alpha", "val_DER"} & names()
    line = "METRIC step=3000 train_loss=2.5 alpha=0.1"
    regex = {d["Name"]: d["Regex"] for d in metric_definitions(diphone=True)}["alpha"]
    assert float(re.search(regex, line).group(1)) == 0.1


def trainer_lines() -> list[str]:
    """Metric lines exactly as the trainer's own sink prints them."""
    import io

    from trainer.metrics import MetricsSink

    out = io.StringIO()
    sink = MetricsSink(None, stream=out)
    sink.emit("train", 199, {"train_loss": 1.2345, "lr": 1e-05, "lr_day": 0.005, "grad_norm": 0.81,
                             "sec_per_batch": 0.0412})
    sink.emit("val", 1999, {"val_loss": 0.9876, "val_PER": 0.2345, "best_val_PER": 0.2, "val_seconds": 12.5})
    sink.emit("val", 1999, {"val_PER": 0.21}, session="t15.2023.08.13")
    return out.getvalue().splitlines()


def test_metric_regexes_have_no_anchor_and_read_one_line_of_a_block():
    assert not any(d["Regex"].startswith("^") for d in metric_definitions())
    block = "\n".join(["2026-12-02T07:00:00Z " + trainer_lines()[0], *trainer_lines()[1:]])
    found = {d["Name"]: [float(m.group(1)) for m in re.finditer(d["Regex"], block)] for d in metric_definitions()}
    assert found["train_loss"] == [1.2345] and found["val_PER"] == [0.2345] and found["val_loss"] == [0.9876]


def test_metric_regexes_match_the_trainers_lines():
    found: dict[str, list[float]] = {}
    for line in trainer_lines():
        for d in metric_definitions():
            m = re.search(d["Regex"], line)
            if m:
                found.setdefault(d["Name"], []).append(float(m.group(1)))
    assert found == {
        "train_loss": [1.2345], "lr": [1e-05], "lr_day": [0.005], "grad_norm": [0.81],
        "sec_per_batch": [0.0412], "val_loss": [0.9876], "val_PER": [0.2345], "best_val_PER": [0.2],
        "val_seconds": [12.5],
    }  # the per-session line is not mistaken for the overall val_PER


# --- the same limits through `start` against the stack in moto: one line, nothing uploaded ----------


def nothing_uploaded_or_submitted(deployed) -> bool:
    listed = deployed.client("s3").list_objects_v2(Bucket=deployed.outputs[keys.OUTPUT_BUCKET])
    return listed["KeyCount"] == 0 and deployed.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []


def start_fails_in_one_line(cli, deployed, *args: str) -> str:
    from trainer.config import DEMO_CONFIG

    args = args if "--config" in args else ("--config", str(DEMO_CONFIG), *args)
    code, _, err = cli("start", "-y", *args)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert nothing_uploaded_or_submitted(deployed)
    return lines[0]


def test_start_refuses_a_long_hyperparameter_before_upload(deployed, cli):
    line = start_fails_in_one_line(cli, deployed, "--data-prefix", "p" * 2600)
    assert "HyperParameters['data_url']" in line and "2,500 (from --data-prefix)" in line


def test_start_refuses_a_bad_tag_value_before_upload(deployed, cli, tmp_path):
    from trainer.config import DEMO_CONFIG

    config = tmp_path / "demo (copy).yaml"
    config.write_text(DEMO_CONFIG.read_text())
    line = start_fails_in_one_line(cli, deployed, "--config", str(config))
    assert "Tags[b2t:config].Value: 'demo (copy).yaml' does not match" in line


def test_start_refuses_max_wait_equal_to_max_run_before_upload(deployed, cli):
    line = start_fails_in_one_line(cli, deployed, "--max-run", "5", "--max-wait", "5")
    assert "--max-wait must be longer than --max-run" in line


def test_start_refuses_a_long_job_name_before_upload(deployed, cli):
    assert "is not valid" in start_fails_in_one_line(cli, deployed, "--job-name", "x" * 61)


def test_start_uploads_the_overrides_beside_the_config(deployed, cli):
    from trainer.config import DEMO_CONFIG

    code, _, err = cli("start", "-y", "--config", DEMO_CONFIG, "--set", "lr_max=0.004", "--num-training-batches", "7")
    assert code == 0, err
    s3 = deployed.client("s3")
    listed = s3.list_objects_v2(Bucket=deployed.outputs[keys.OUTPUT_BUCKET])["Contents"]
    (key,) = [o["Key"] for o in listed if o["Key"].endswith("/" + OVERRIDES_FILE)]
    assert key.startswith("jobs/") and "/input/config/" in key
    body = s3.get_object(Bucket=deployed.outputs[keys.OUTPUT_BUCKET], Key=key)["Body"].read()
    assert json.loads(body) == ["lr_max=0.004", "num_training_batches=7"]


def test_the_trainer_reads_the_channel_overrides_and_cache_dir(tmp_path, monkeypatch):
    from trainer.environment import spec_from_container

    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({"config_file": "demo.yaml", "data_url": "s3://b/data/"})
    )
    channel = tmp_path / "input" / "data" / "config"
    channel.mkdir(parents=True)
    for name, text in channel_files(spec(overrides=("lr_max=0.004",)), "seed: 1\n").items():
        (channel / name).write_text(text)
    env = {"B2T_OPT_ML": str(tmp_path), "B2T_DATA_CACHE_DIR": "/opt/ml/input/data/b2t-cache"}
    run = spec_from_container(env)
    assert run.config_path == channel / "demo.yaml"
    assert run.overrides == (f"dataset.storage.disk_cache_dir={tmp_path}/input/data/b2t-cache", "lr_max=0.004")


def test_the_summary_says_why_the_volume_has_no_kms_key(outputs):
    from dataclasses import replace

    from launcher.launch import volume_notes

    keyed = replace(outputs, kms_key_arn=KEY_ARN)
    (note,) = volume_notes(spec(instance_type="ml.g5.2xlarge"), keyed)
    assert "local NVMe storage" in note and "VolumeKmsKeyId" in note
    assert volume_notes(spec(instance_type="ml.p3.2xlarge"), keyed) == []
    assert volume_notes(spec(instance_type="ml.g5.2xlarge"), outputs) == []
    assert "not in the instance-storage table" in volume_notes(spec(instance_type="ml.zz9.large"), outputs)[0]


def test_the_jobs_region_travels_in_the_environment(outputs):
    # Inside a job SageMaker sets no AWS_REGION: without these the trainer's S3 client would
    # fall back to botocore's default.
    request = build(placeholder_outputs(region="eu-west-1"))
    assert request["Environment"]["AWS_REGION"] == request["Environment"]["AWS_DEFAULT_REGION"] == "eu-west-1"
    # SageMaker starts the image as `IMAGE train` (README: "The training image").
    assert "ContainerEntrypoint" not in request["AlgorithmSpecification"]
