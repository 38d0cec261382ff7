"""Pure functions from a custom resource (and settings) to the manifests of its children."""
