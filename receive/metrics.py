"""The receiver's figures on /metrics, per protocol and tenant."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

#: Distinct tenants named in labels; later ones are counted as "_other" (with authentication off a
#: client can name any tenant, and each would be a new series).
MAX_TENANT_LABELS = 1000


class ReceiveMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("loglake_receive_requests", "Push requests answered, by status code",
                                ["protocol", "tenant", "code"], registry=self.registry)
        self.records = Counter("loglake_receive_records", "Records acknowledged by the broker",
                               ["protocol", "tenant"], registry=self.registry)
        self.bytes = Counter("loglake_receive_bytes", "Request bytes (decompressed) acknowledged by the broker",
                             ["protocol", "tenant"], registry=self.registry)
        self.rejections = Counter("loglake_receive_rejections", "Requests or bulk items refused, by reason",
                                  ["protocol", "tenant", "reason"], registry=self.registry)
        self.ready = Gauge("loglake_receive_ready", "1 while the broker takes frames", registry=self.registry)
        self._tenants: set[str] = set()

    def tenant_label(self, tenant: str) -> str:
        if tenant in self._tenants:
            return tenant
        if len(self._tenants) >= MAX_TENANT_LABELS:
            return "_other"
        self._tenants.add(tenant)
        return tenant
