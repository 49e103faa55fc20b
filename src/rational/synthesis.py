"""Placeholder: `rational generate` is being built (see the issue tracker)."""

from .errors import UserError


def generate_command() -> None:
    raise UserError("rational generate is not implemented yet")
