"""Placeholder: `rational eval` is being built (see the issue tracker)."""

from .errors import UserError


def eval_command() -> None:
    raise UserError("rational eval is not implemented yet")


def judge_check_command() -> None:
    raise UserError("rational judge-check is not implemented yet")
