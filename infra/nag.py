"""cdk-nag (v3) wiring, reasoned acknowledgements and checkov skips, in one place."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from aws_cdk import Acknowledgment, App, CfnResource, Stack, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

WILDCARD_RULE = "AwsSolutions-IAM5"


def apply_nag(app: App) -> None:
    """Run AwsSolutions checks at synthesis: any unacknowledged finding fails `synth`."""
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))


def acknowledge(scope: IConstruct, rule_id: str, reason: str) -> None:
    """Acknowledge one finding on `scope` and its children; the reason is mandatory."""
    if not reason.strip():
        raise ValueError(f"acknowledging {rule_id} needs a reason")
    Validations.of(scope).acknowledge(Acknowledgment(id=rule_id, reason=reason))


def acknowledge_wildcard_resources(scope: IConstruct, resources: Iterable[str], reason: str) -> None:
    """Acknowledge AwsSolutions-IAM5 for exactly these resource ARNs (each a finding of its own).

    The finding id holds the ARN as cdk-nag renders it (`<LogicalId.Arn>/data/*`), so it is
    computed here from the same tokens the policy uses, instead of being copied by hand.
    """
    stack = Stack.of(scope)
    for resource in resources:
        rendered = flatten_cfn_reference(stack.resolve(resource))
        acknowledge(scope, f"{WILDCARD_RULE}[Resource::{rendered}]", reason)


def flatten_cfn_reference(node: Any) -> str:
    """The flat string cdk-nag makes of a CloudFormation value (a port of its flattenCfnReference)."""
    if node is None:
        return ""
    if isinstance(node, str):
        return node.replace("${", "<").replace("}", ">")
    if isinstance(node, dict):
        if "Fn::Join" in node:
            delimiter, items = node["Fn::Join"]
            return delimiter.join(flatten_cfn_reference(item) for item in items)
        if "Fn::Sub" in node:
            return flatten_cfn_reference(node["Fn::Sub"])
        if "Fn::GetAtt" in node:
            resource, attribute = node["Fn::GetAtt"]
            return f"<{flatten_cfn_reference(resource)}.{flatten_cfn_reference(attribute)}>"
        if "Fn::ImportValue" in node:
            return flatten_cfn_reference(node["Fn::ImportValue"])
        if "Ref" in node:
            return f"<{flatten_cfn_reference(node['Ref'])}>"
    return json.dumps(node, separators=(",", ":"))


def checkov_skip(construct: IConstruct, check_id: str, comment: str) -> None:
    """Record a checkov skip with its reason in the resource's template metadata."""
    if not comment.strip():
        raise ValueError(f"skipping {check_id} needs a comment")
    resource = construct if isinstance(construct, CfnResource) else construct.node.default_child
    if not isinstance(resource, CfnResource):
        raise TypeError(f"{construct.node.path} has no CloudFormation resource to annotate")
    metadata = resource.get_metadata("checkov") or {"skip": []}
    metadata["skip"].append({"id": check_id, "comment": comment})
    resource.add_metadata("checkov", metadata)
