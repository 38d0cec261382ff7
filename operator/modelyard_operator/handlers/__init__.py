"""kopf glue: watch events enqueue keys; reconcilers read, build, apply and write status."""
