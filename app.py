#!/usr/bin/env python3
"""CDK entry point (`npx cdk synth|diff|deploy`); the app itself lives in infra/app.py."""

from infra.app import build_app

app, _ = build_app()
app.synth()
