"""modelyard_server."""
