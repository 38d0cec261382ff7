"""How the operator words a pydantic validation error in a status condition."""

from __future__ import annotations

from pydantic import ValidationError


def format_validation_error(error: ValidationError) -> str:
    """One problem after another, each starting with the camelCase field path. The trainer
    words its configuration errors the same way (modelyard_trainer.config), so that a
    ModelTraining's InvalidSpec message and the trainer's own refusal read alike."""
    problems = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        # Whole-object checks have no location of their own; their message names the fields.
        problems.append(f"{path}: {message}" if path else message)
    return "; ".join(problems)
