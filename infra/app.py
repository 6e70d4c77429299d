"""Builds the CDK app: settings from context, the stack, and the cdk-nag gate.

Shared by the `app.py` entry point (`cdk synth`/`cdk deploy`) and the tests, so both run
exactly the same checks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from aws_cdk import App

from infra.nag import apply_nag
from infra.settings import StackSettings
from infra.stack import TrainingStack


def build_app(context: Mapping[str, Any] | None = None, *, outdir: str | None = None) -> tuple[App, TrainingStack]:
    """An app holding the training stack, with AwsSolutions checks enabled.

    `context` is merged over cdk.json's context (the CLI passes cdk.json itself; tests pass
    it explicitly, see tests/infra/conftest.py).
    """
    app = App(context=dict(context) if context else None, outdir=outdir)
    settings = StackSettings.from_context(
        app.node.try_get_context,
        default_account=os.environ.get("CDK_DEFAULT_ACCOUNT"),
        default_region=os.environ.get("CDK_DEFAULT_REGION"),
    )
    stack = TrainingStack(app, settings=settings)
    apply_nag(app)
    return app, stack
