"""Running Knative revisions on this machine, for `knative-xds up`: processes, an activator, an echo app."""
