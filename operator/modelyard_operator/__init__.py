"""modelyard_operator."""
