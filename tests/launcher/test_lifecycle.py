"""Job names are never reused and a lineage is locked; every refusal leaves S3 as it was.

Against the stack deployed into a moto server (server mode): S3's state is every object
version of both buckets with its ETag, compared before and after each refusal.
"""

from __future__ import annotations

import json

import pytest

from trainer.config import DEMO_CONFIG

from tests.launcher.test_errors import assert_one_line_error

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse")


def s3_state(deployed) -> dict[tuple[str, str, str], str]:
    """(bucket, key, version id) -> ETag of every object version in the stack's buckets."""
    s3 = deployed.client("s3")
    state = {}
    for bucket in (deployed.data_bucket, deployed.output_bucket):
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for v in page.get("Versions", []):
                state[(bucket, v["Key"], v["VersionId"])] = v["ETag"]
    return state


def job_names(deployed) -> list[str]:
    return sorted(j["TrainingJobName"] for j in deployed.client("sagemaker").list_training_jobs()["TrainingJobSummaries"])


@pytest.fixture
def refused(deployed, cli):
    """Run a command that must be refused with one line; assert S3 and the job list did not change."""

    def run(*args: str, needles: tuple[str, ...]) -> str:
        before, jobs_before = s3_state(deployed), job_names(deployed)
        code, out, err = cli(*args)
        assert_one_line_error(code, err, *needles)
        assert s3_state(deployed) == before
        assert job_names(deployed) == jobs_before
        return err

    return run


def start(cli, name: str, *extra: str):
    return cli("start", "--config", DEMO_CONFIG, "--num-training-batches", "50", "--job-name", name, "-y", *extra)


def test_submit_twice_resume_twice_resume_completed_change_nothing(deployed, cli, refused):
    code, _, err = start(cli, "exp1")
    assert code == 0, err
    # 1. the same name again, with an edited config: refused before the config is uploaded
    refused("start", "--config", DEMO_CONFIG, "--job-name", "exp1", "--set", "lr_max=0.001", "-y",
            needles=("job name 'b2t-exp1' is taken (a SageMaker training job, Completed)", "never reused"))

    # 2. resume twice: the second while the first resumed job runs
    deployed.training_job("b2t-exp1").training_job_status = "Stopped"
    code, _, err = cli("resume", "exp1", "--job-name", "exp1-r1", "-y")
    assert code == 0, err
    deployed.training_job("b2t-exp1-r1").training_job_status = "InProgress"
    refused("resume", "exp1", "--job-name", "exp1-r2", "-y",
            needles=("job b2t-exp1-r1 of the same lineage (checkpoints of b2t-exp1) is InProgress",))
    deployed.training_job("b2t-exp1-r1").training_job_status = "Stopped"
    refused("resume", "exp1", "--job-name", "exp1-r2", "-y",
            needles=("job b2t-exp1 was already resumed as b2t-exp1-r1", "resume b2t-exp1-r1 instead"))

    # 3. a Completed job: refused unless asked for more batches than it was set to train
    deployed.training_job("b2t-exp1-r1").training_job_status = "Completed"
    refused("resume", "exp1-r1", "--job-name", "exp1-r2", "-y",
            needles=("job b2t-exp1-r1 is Completed (all 50 batches)", "--num-training-batches N above 50"))
    refused("resume", "exp1-r1", "--job-name", "exp1-r2", "--num-training-batches", "50", "-y",
            needles=("--num-training-batches 50 is not more than the 50 batches",))
    # ... and a resume may not take a used name either
    refused("resume", "exp1-r1", "--job-name", "exp1", "--num-training-batches", "80", "-y",
            needles=("job name 'b2t-exp1' is taken",))
    code, out, err = cli("resume", "exp1-r1", "--job-name", "exp1-r2", "--num-training-batches", "80", "-y")
    assert code == 0, err
    desc = deployed.client("sagemaker").describe_training_job(TrainingJobName="b2t-exp1-r2")
    assert desc["CheckpointConfig"]["S3Uri"] == f"s3://{deployed.output_bucket}/checkpoints/b2t-exp1/"
    overrides = deployed.client("s3").get_object(Bucket=deployed.output_bucket,
                                                 Key="jobs/b2t-exp1-r2/input/config/overrides.json")
    assert "num_training_batches=80" in json.loads(overrides["Body"].read())
    lineage = deployed.client("s3").list_objects_v2(Bucket=deployed.output_bucket, Prefix="jobs/b2t-exp1/lineage/")
    assert [o["Key"] for o in lineage["Contents"]] == ["jobs/b2t-exp1/lineage/0001.json", "jobs/b2t-exp1/lineage/0002.json"]


def test_a_name_with_objects_in_s3_but_no_job_is_taken(deployed, cli, refused):
    deployed.client("s3").put_object(Bucket=deployed.output_bucket, Key="jobs/b2t-old/output/model.tar.gz", Body=b"x")
    refused("start", "--config", DEMO_CONFIG, "--job-name", "old", "-y",
            needles=(f"job name 'b2t-old' is taken (s3://{deployed.output_bucket}/jobs/b2t-old/ holds objects)",))
    deployed.client("s3").put_object(Bucket=deployed.output_bucket, Key="checkpoints/b2t-old2/checkpoint_00000001.pt",
                                     Body=b"x")
    refused("start", "--config", DEMO_CONFIG, "--job-name", "old2", "--dry-run",
            needles=("job name 'b2t-old2' is taken",))


def test_a_config_already_uploaded_is_never_overwritten(deployed):
    """Two launchers racing for one name: the config is written with If-None-Match, so the second fails."""
    from launcher.aws import Aws
    from launcher.errors import JobNameTaken
    from launcher.jobs import upload_config

    aws = Aws()
    uri = f"s3://{deployed.output_bucket}/jobs/b2t-race/input/config/"
    upload_config(aws, uri, "demo.yaml", "first", "b2t-race")
    with pytest.raises(JobNameTaken, match="b2t-race"):
        upload_config(aws, uri, "demo.yaml", "second", "b2t-race")
    body = deployed.client("s3").get_object(Bucket=deployed.output_bucket, Key="jobs/b2t-race/input/config/demo.yaml")
    assert body["Body"].read() == b"first"


def test_a_racing_resume_loses_the_lineage_entry(deployed, cli, refused):
    code, _, err = start(cli, "exp2")
    assert code == 0, err
    deployed.training_job("b2t-exp2").training_job_status = "Stopped"
    # another launcher claimed entry 0001 between our checks and our write
    deployed.client("s3").put_object(Bucket=deployed.output_bucket, Key="jobs/b2t-exp2/lineage/0001.json",
                                     Body=b'{"job": "b2t-exp2-other"}')
    # ... its job does not exist (yet): the lineage check passes, the conditional write does not
    from launcher import resume
    from launcher.aws import Aws
    from launcher.jobs import put_new
    from launcher.stack import read_stack_outputs

    aws = Aws()
    plan = resume.plan_resume(aws, read_stack_outputs(aws), "b2t-exp2", new_name="exp2-r1")
    (uri, body, taken), = plan.claims
    assert uri.endswith("/lineage/0002.json")  # 0001 is taken: the next slot
    lineage = resume.Lineage.of(read_stack_outputs(aws), f"s3://{deployed.output_bucket}/checkpoints/b2t-exp2/")
    uri, body, taken = lineage.entry(1, "b2t-exp2-r1", "b2t-exp2")
    with pytest.raises(Exception, match="another job of b2t-exp2's lineage was submitted a moment ago"):
        put_new(aws, uri, body, taken)


def test_dry_run_before_any_image_says_which_tag(no_image, cli):
    code, out, err = cli("start", "--config", DEMO_CONFIG, "--dry-run")
    assert code == 0, err
    assert "no image in b2t-training yet: this is the tag `python -m launcher image --run` would push" in " ".join(out.split())
    code, _, err = cli("start", "--config", DEMO_CONFIG, "-y")
    assert_one_line_error(code, err, "no image in b2t-training yet")


def test_resume_names_the_new_job_after_its_lineage(deployed, cli):
    code, _, err = start(cli, "exp3")
    assert code == 0, err
    deployed.training_job("b2t-exp3").training_job_status = "Stopped"
    code, out, err = cli("resume", "exp3", "-y")  # made within the same second as exp3: still a name of its own
    assert code == 0, err
    assert "submitted b2t-exp3-r1" in out
