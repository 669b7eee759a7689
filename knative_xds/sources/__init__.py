"""Where Knative objects come from: a watched YAML file or folder, or a Kubernetes cluster."""
