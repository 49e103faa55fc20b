"""Placeholder: `rational report` is being built (see the issue tracker)."""

from .errors import UserError


def report_command() -> None:
    raise UserError("rational report is not implemented yet")
