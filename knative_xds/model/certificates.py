"""Which TLS certificates the served Ingresses name, and what each holds now.

A certificate is served while some served Ingress names its Secret. A Secret
deleted (or made unparsable) under a served Ingress leaves that Ingress at its
last good version, and so its certificate keeps serving with it. The gateway's
own certificate (`cluster-cert-secret`, cluster_cert.py) is served while named.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from .types import Certificate, Ingress, ObjectKey

# The parsed Secret of a key, or None.
SecretOf = Callable[[ObjectKey], object]
# The user that is the gateway itself (config-xds `cluster-cert-secret`, cluster_cert.py):
# no Ingress has an empty namespace.
GATEWAY_USER = ObjectKey("", "config-xds")


class CertificateIndex:
    def __init__(self) -> None:
        self._users: defaultdict[ObjectKey, set[ObjectKey]] = defaultdict(set)
        self.certificates: dict[ObjectKey, Certificate] = {}

    def swap(self, key: ObjectKey, old: Ingress | None, new: Ingress | None) -> set[ObjectKey]:
        """One Ingress moved from `old` to `new`; the Secrets it started or stopped naming."""
        before = {t.secret for t in old.tls} if old else set()
        after = {t.secret for t in new.tls} if new else set()
        for secret in before - after:
            self._users[secret].discard(key)
            if not self._users[secret]:
                del self._users[secret]
        for secret in after - before:
            self._users[secret].add(key)
        return before ^ after

    def use_for_gateway(self, before: ObjectKey | None, after: ObjectKey | None) -> set[ObjectKey]:
        """The gateway's own certificate moved from `before` to `after` (None: none); the
        Secrets it started or stopped naming. Served while named, as an Ingress's is."""
        if before == after:
            return set()
        if before is not None:
            self._users[before].discard(GATEWAY_USER)
            if not self._users[before]:
                del self._users[before]
        if after is not None:
            self._users[after].add(GATEWAY_USER)
        return {k for k in (before, after) if k is not None}

    def refresh(self, secrets: Iterable[ObjectKey], secret_of: SecretOf) -> set[ObjectKey]:
        """Bring these Secrets' certificates up to date; the keys that changed."""
        changed: set[ObjectKey] = set()
        for key in secrets:
            value = None
            if key in self._users:
                found = secret_of(key)
                value = found if isinstance(found, Certificate) else self.certificates.get(key)
            if self.certificates.get(key) != value:
                changed.add(key)
                if value is None:
                    del self.certificates[key]
                else:
                    self.certificates[key] = value
        return changed
