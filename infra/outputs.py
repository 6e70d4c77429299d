"""Stack output keys: the contract between the CDK app and the launcher.

This module must stay free of CDK imports: the launcher imports it on machines
where aws-cdk-lib is not installed.
"""

from __future__ import annotations

DEFAULT_STACK_NAME = "B2tSageMaker"

# Keys of the CloudFormation outputs the stack declares.
DATA_BUCKET = "DataBucketName"
OUTPUT_BUCKET = "OutputBucketName"
EXECUTION_ROLE_ARN = "ExecutionRoleArn"
ECR_REPOSITORY_URI = "EcrRepositoryUri"
ECR_REPOSITORY_NAME = "EcrRepositoryName"
TRAINING_LOG_GROUP = "TrainingLogGroupName"
LAUNCHER_POLICY_ARN = "LauncherPolicyArn"
DEPLOY_ROLE_ARN = "DeployRoleArn"  # only when a GitHub repository is configured
IMAGE_PUSH_ROLE_ARN = "ImagePushRoleArn"  # only when a GitHub repository is configured
# `cdk bootstrap --cloudformation-execution-policies <this>` (infra/cfn_execution_policy.py)
CFN_EXECUTION_POLICY_ARN = "CfnExecutionPolicyArn"
REGION = "Region"
JOB_NAME_PREFIX = "JobNamePrefix"
DATA_PREFIX = "DataPrefix"
KMS_KEY_ARN = "KmsKeyArn"  # only when a customer-managed key is configured

# Outputs the launcher cannot work without.
REQUIRED = (
    DATA_BUCKET,
    OUTPUT_BUCKET,
    EXECUTION_ROLE_ARN,
    ECR_REPOSITORY_URI,
    ECR_REPOSITORY_NAME,
    TRAINING_LOG_GROUP,
    REGION,
    JOB_NAME_PREFIX,
    DATA_PREFIX,
)
OPTIONAL = (LAUNCHER_POLICY_ARN, DEPLOY_ROLE_ARN, IMAGE_PUSH_ROLE_ARN, KMS_KEY_ARN, CFN_EXECUTION_POLICY_ARN)

# Key prefixes inside the buckets. The execution role's policy is scoped to these,
# and the launcher writes/reads exactly these.
DATA_KEY_PREFIX = "data/"  # data bucket: <DATA_KEY_PREFIX><session>/data_train.hdf5
# Output bucket: SageMaker writes jobs/<job>/output/model.tar.gz (S3OutputPath = s3://<out>/jobs/),
# and the launcher uploads the job's config channel to jobs/<job>/input/config/.
OUTPUT_KEY_PREFIX = "jobs/"
CHECKPOINT_KEY_PREFIX = "checkpoints/"  # output bucket: checkpoints/<job>/...
TRAINING_LOG_GROUP_NAME = "/aws/sagemaker/TrainingJobs"
METRIC_NAMESPACE = "/aws/sagemaker/TrainingJobs"
