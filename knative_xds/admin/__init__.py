"""The admin side of the control plane: HTTP probes and debug views (http.py), what
/debug/status shows (status_view.py) and Prometheus metrics (metrics.py)."""
