"""State → Envoy resources: one builder module per Envoy kind, composed by the translator."""

from .names import Listener
from .translator import Delta, GatewayConfig, Stats, Translator

__all__ = ["Delta", "GatewayConfig", "Listener", "Stats", "Translator"]
