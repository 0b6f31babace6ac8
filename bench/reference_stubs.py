"""Stand-ins for the reference's import-only dependencies that are not on the package index
(`wandb_workspaces`, used by its report tooling). The harnesses run in the reference's
environment and call `install()` before importing `spd`; nothing of these is ever called."""

import sys
from unittest import mock

NOT_ON_THE_INDEX = (
    "wandb_workspaces",
    "wandb_workspaces.reports",
    "wandb_workspaces.reports.v2",
    "wandb_workspaces.workspaces",
)


def install() -> None:
    for name in NOT_ON_THE_INDEX:
        sys.modules.setdefault(name, mock.MagicMock())
