"""Placeholder: `rational run` is being built (see the issue tracker)."""

from .errors import UserError


def run_command() -> None:
    raise UserError("rational run is not implemented yet")
