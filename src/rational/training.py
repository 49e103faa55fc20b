"""Placeholder: `rational train` is being built (see the issue tracker)."""

from .errors import UserError


def train_command() -> None:
    raise UserError("rational train is not implemented yet")
