"""What the deployed policies allow, with moto enforcing IAM on every request.

The stack is deployed, objects are seeded and the principals are set up while enforcement
is off; then each check runs with the principal's own credentials:
- the execution role, assumed as SageMaker would, and
- a user holding only the launcher managed policy.

moto evaluates S3 actions and resources but not condition keys such as `s3:prefix`, so the
launcher's listing scope is asserted on the template instead (test_infra_template.py); the
execution role lists its two buckets without a prefix condition (infra/statements.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from infra import outputs

# moto has no CloudFormation model for bucket policies and OIDC providers: it skips them.
pytestmark = pytest.mark.filterwarnings(r"ignore:Tried to parse .* but it's not supported by moto:UserWarning")

DATA_OBJECT = "data/t15.2023.08.11/data_train.hdf5"
CONFIG_OBJECT = "jobs/b2t-demo/input/config/config.yaml"
MODEL_OBJECT = "jobs/b2t-demo/output/model.tar.gz"
CHECKPOINT_OBJECT = "checkpoints/b2t-demo/checkpoint.pt"
KEPT_CHECKPOINT_OBJECT = "checkpoints/b2t-demo/best.pt"
OTHER_OBJECT = "other/notes.txt"
OTHER_BUCKET = "another-lab-bucket"


@dataclass(frozen=True)
class Buckets:
    data: str
    output: str
    other: str = OTHER_BUCKET


@dataclass(frozen=True)
class Principals:
    buckets: Buckets
    execution_role: Any  # s3 clients holding each principal's credentials
    launcher: Any


def s3_client(url: str, access_key: str, secret_key: str, token: str | None = None):
    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, aws_session_token=token,
    )


@pytest.fixture(scope="module")
def principals(moto_server, deployed, iam_enforced) -> Principals:
    buckets = Buckets(data=deployed[outputs.DATA_BUCKET], output=deployed[outputs.OUTPUT_BUCKET])
    admin = moto_server.client("s3")
    admin.create_bucket(Bucket=buckets.other)
    for bucket, key in [
        (buckets.data, DATA_OBJECT), (buckets.data, OTHER_OBJECT), (buckets.output, CONFIG_OBJECT),
        (buckets.output, MODEL_OBJECT), (buckets.output, CHECKPOINT_OBJECT),
        (buckets.output, KEPT_CHECKPOINT_OBJECT), (buckets.output, OTHER_OBJECT),
        (buckets.other, OTHER_OBJECT),
    ]:
        admin.put_object(Bucket=bucket, Key=key, Body=b"seed")

    session = moto_server.client("sts").assume_role(
        RoleArn=deployed[outputs.EXECUTION_ROLE_ARN], RoleSessionName="training-job"
    )["Credentials"]
    iam = moto_server.client("iam")
    iam.create_user(UserName="launcher")
    iam.attach_user_policy(UserName="launcher", PolicyArn=deployed[outputs.LAUNCHER_POLICY_ARN])
    user_key = iam.create_access_key(UserName="launcher")["AccessKey"]

    iam_enforced()
    return Principals(
        buckets=buckets,
        execution_role=s3_client(
            moto_server.url, session["AccessKeyId"], session["SecretAccessKey"], session["SessionToken"]
        ),
        launcher=s3_client(moto_server.url, user_key["AccessKeyId"], user_key["SecretAccessKey"]),
    )


def multipart_then_abort(s3, bucket: str, key: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


Check = Callable[[Any, Buckets], Any]
ALLOW, DENY = True, False

EXECUTION_ROLE_MATRIX: list[tuple[str, Check, bool]] = [
    ("list data/", lambda s3, b: s3.list_objects_v2(Bucket=b.data, Prefix="data/"), ALLOW),
    ("list the data bucket without a prefix", lambda s3, b: s3.list_objects_v2(Bucket=b.data), ALLOW),
    ("read training data", lambda s3, b: s3.get_object(Bucket=b.data, Key=DATA_OBJECT), ALLOW),
    ("read config channel", lambda s3, b: s3.get_object(Bucket=b.output, Key=CONFIG_OBJECT), ALLOW),
    ("write model output", lambda s3, b: s3.put_object(Bucket=b.output, Key=MODEL_OBJECT, Body=b"m"), ALLOW),
    ("write checkpoint", lambda s3, b: s3.put_object(Bucket=b.output, Key=CHECKPOINT_OBJECT, Body=b"c"), ALLOW),
    ("read checkpoint", lambda s3, b: s3.get_object(Bucket=b.output, Key=CHECKPOINT_OBJECT), ALLOW),
    ("delete old checkpoint", lambda s3, b: s3.delete_object(Bucket=b.output, Key=CHECKPOINT_OBJECT), ALLOW),
    ("delete model output", lambda s3, b: s3.delete_object(Bucket=b.output, Key=MODEL_OBJECT), DENY),
    ("multipart upload to jobs/", lambda s3, b: multipart_then_abort(s3, b.output, MODEL_OBJECT + ".big"), ALLOW),
    ("list checkpoints/", lambda s3, b: s3.list_objects_v2(Bucket=b.output, Prefix="checkpoints/"), ALLOW),
    ("write training data", lambda s3, b: s3.put_object(Bucket=b.data, Key=DATA_OBJECT, Body=b"x"), DENY),
    ("delete training data", lambda s3, b: s3.delete_object(Bucket=b.data, Key=DATA_OBJECT), DENY),
    ("read data bucket outside data/", lambda s3, b: s3.get_object(Bucket=b.data, Key=OTHER_OBJECT), DENY),
    ("write output bucket outside prefixes", lambda s3, b: s3.put_object(Bucket=b.output, Key="x", Body=b"x"), DENY),
    ("read output bucket outside prefixes", lambda s3, b: s3.get_object(Bucket=b.output, Key=OTHER_OBJECT), DENY),
    ("read another bucket", lambda s3, b: s3.get_object(Bucket=b.other, Key=OTHER_OBJECT), DENY),
    ("write another bucket", lambda s3, b: s3.put_object(Bucket=b.other, Key="x", Body=b"x"), DENY),
    ("list another bucket", lambda s3, b: s3.list_objects_v2(Bucket=b.other), DENY),
    ("list all buckets", lambda s3, b: s3.list_buckets(), DENY),
    ("create a bucket", lambda s3, b: s3.create_bucket(Bucket="exfiltration-bucket"), DENY),
    ("delete the data bucket", lambda s3, b: s3.delete_bucket(Bucket=b.data), DENY),
    ("change the output bucket policy",
     lambda s3, b: s3.put_bucket_policy(Bucket=b.output, Policy='{"Statement": []}'), DENY),
]

LAUNCHER_MATRIX: list[tuple[str, Check, bool]] = [
    ("upload training data", lambda s3, b: s3.put_object(Bucket=b.data, Key=DATA_OBJECT, Body=b"d"), ALLOW),
    ("upload config channel", lambda s3, b: s3.put_object(Bucket=b.output, Key=CONFIG_OBJECT, Body=b"c"), ALLOW),
    ("download model", lambda s3, b: s3.get_object(Bucket=b.output, Key=MODEL_OBJECT), ALLOW),
    # Only SageMaker (the execution role) writes a job's output: no launcher can replace another's model.
    ("overwrite a job's model output",
     lambda s3, b: s3.put_object(Bucket=b.output, Key=MODEL_OBJECT, Body=b"evil"), DENY),
    ("write a job's output data",
     lambda s3, b: s3.put_object(Bucket=b.output, Key="jobs/b2t-demo/output/output.tar.gz", Body=b"x"), DENY),
    ("write directly under jobs/", lambda s3, b: s3.put_object(Bucket=b.output, Key="jobs/x", Body=b"x"), DENY),
    ("read checkpoint", lambda s3, b: s3.get_object(Bucket=b.output, Key=KEPT_CHECKPOINT_OBJECT), ALLOW),
    ("write checkpoint", lambda s3, b: s3.put_object(Bucket=b.output, Key=CHECKPOINT_OBJECT, Body=b"c"), DENY),
    ("delete training data", lambda s3, b: s3.delete_object(Bucket=b.data, Key=DATA_OBJECT), DENY),
    ("delete job output", lambda s3, b: s3.delete_object(Bucket=b.output, Key=MODEL_OBJECT), DENY),
    ("write another bucket", lambda s3, b: s3.put_object(Bucket=b.other, Key="x", Body=b"x"), DENY),
    ("list all buckets", lambda s3, b: s3.list_buckets(), DENY),
]


def outcome(check: Check, s3, buckets: Buckets) -> bool:
    """True if the request was allowed; False on AccessDenied; anything else is a test error."""
    try:
        check(s3, buckets)
    except ClientError as error:
        if error.response["Error"]["Code"] == "AccessDenied":
            return False
        raise
    return True


@pytest.mark.parametrize(("name", "check", "allowed"), EXECUTION_ROLE_MATRIX, ids=[r[0] for r in EXECUTION_ROLE_MATRIX])
def test_execution_role(principals, name, check, allowed):
    assert outcome(check, principals.execution_role, principals.buckets) is allowed, name


@pytest.mark.parametrize(("name", "check", "allowed"), LAUNCHER_MATRIX, ids=[r[0] for r in LAUNCHER_MATRIX])
def test_launcher_policy(principals, name, check, allowed):
    assert outcome(check, principals.launcher, principals.buckets) is allowed, name
