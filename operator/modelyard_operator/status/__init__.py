"""Pure functions from a custom resource and its observed children to its status."""
