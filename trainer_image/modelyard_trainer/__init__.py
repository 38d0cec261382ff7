"""modelyard_trainer."""
