"""milter: a spam filter that sits in front of Postfix as an SMTP proxy."""

import os

__version__ = "0.1.0"

# onnxruntime's telemetry (official builds, Linux too) writes a device ID and an SQLite event
# store with OS, CPU and path details under $HOME/.cache/Microsoft/ at its first session, and
# logs a coloured warning when it cannot. milter writes nothing outside its configured
# directories and sends nothing anywhere: this variable, read when onnxruntime initialises
# (after this import in every milter process and the ones they start), turns all of it off.
# An administrator who set it explicitly keeps their value.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
