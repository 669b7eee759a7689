"""KIngress status: which generations every gateway serves, and writing that back.

`readiness` follows the ADS streams' ACKs; `conditions` shapes the status
Knative reads; `writer` PATCHes it, rate-bounded, from the one replica that
holds the `lease`.
"""
