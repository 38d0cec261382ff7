"""Where models and data live: local paths, pvc:// claims and s3:// object storage."""
