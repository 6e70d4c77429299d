"""The synthesized template as moto can create it.

moto runs a Lambda-backed custom resource only by starting the function in a Docker image
it downloads, which these offline tests cannot do: the stack's two `Custom::AWS` resources
(infra/logs.py: create the training log group if missing, set its retention) and their
provider function are left out here. What those resources call is tested separately, with
the same calls made against moto (tests/infra/test_infra_logs.py).
"""

from __future__ import annotations

import copy
from typing import Any

CUSTOM_PREFIX = "Custom::"


def for_moto(template: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(template)
    resources = body["Resources"]
    dropped = {k for k, r in resources.items() if r["Type"].startswith(CUSTOM_PREFIX)}
    # The provider (function, role, log group) is referenced only by the custom resources.
    tokens = {r["Properties"]["ServiceToken"]["Fn::GetAtt"][0] for k, r in resources.items() if k in dropped}
    dropped |= {k for k in resources if any(k.startswith(t[:-8]) for t in tokens)}
    dropped |= {k for k, r in resources.items() if r["Type"] == "AWS::IAM::Policy" and "CustomResourcePolicy" in k}
    for key in dropped:
        resources.pop(key)
    for resource in resources.values():
        depends = resource.get("DependsOn")
        if isinstance(depends, list):
            resource["DependsOn"] = [d for d in depends if d not in dropped]
        elif depends in dropped:
            resource.pop("DependsOn")
    return body
