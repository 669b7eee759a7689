"""knative-xds: an Envoy xDS control plane for Knative Serving."""

__version__ = "0.1.0"
