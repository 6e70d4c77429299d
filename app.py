#!/usr/bin/env python3
"""CDK entry point (`npx cdk synth|diff|deploy`); the app itself lives in infra/app.py."""

import sys

from infra.app import build_app
from infra.settings import SettingsError

try:
    app, _ = build_app()
except SettingsError as error:  # a bad -c value: one line naming the key, not a traceback
    sys.exit(f"error: {error}")
app.synth()
