"""Lets the tests and the multi-process worker import the shared `trajectory_problem` module."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
