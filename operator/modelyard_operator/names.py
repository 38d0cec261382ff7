"""The names the operator writes under: its field manager, and the labels and annotations of
the children it makes. One home, so that the client, the builders, the planners and the
handlers cannot spell one differently."""

from __future__ import annotations

# The server-side apply field manager and the Events' reporting component.
FIELD_MANAGER = "modelyard-operator"
MANAGED_BY = "modelyard-operator"
PART_OF = "modelyard"

# Recommended labels of every child.
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
# The custom resource a child belongs to: its value is the resource's name.
TRAINING_LABEL = "modelyard.dev/training"
DEPLOYMENT_LABEL = "modelyard.dev/deployment"
# A training Job's (and its pods') attempt and the generation of the spec it runs.
ATTEMPT_LABEL = "modelyard.dev/attempt"
GENERATION_LABEL = "modelyard.dev/generation"
# The well-known node label that topology spread constraints spread training workers over.
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Kueue's: the LocalQueue a training Job is submitted to.
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# A hash of the manifest a child was applied from (see builders.common.with_spec_hash).
SPEC_HASH_ANNOTATION = "modelyard.dev/spec-hash"
# The pod template says which model it serves: the planner tells a rollout's pods by these.
MODEL_URI_ANNOTATION = "modelyard.dev/model-uri"
MODEL_SHA256_ANNOTATION = "modelyard.dev/model-sha256"
# A hash of the pod template itself: tells the pods of the Deployment's current template from
# those of earlier ones that still run (or still fail) during a rollout.
TEMPLATE_HASH_ANNOTATION = "modelyard.dev/template-hash"
