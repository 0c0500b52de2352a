"""Prometheus metrics: the pipeline's health as numbers (served on /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

AMI_EVENTS = Counter("cti_ami_events_total", "AMI events received and folded into the call model")
DOMAIN_EVENTS = Counter("cti_domain_events_total", "Domain events produced by the call model", ["type"])
RESYNCS = Counter("cti_ami_resyncs_total", "Resynchronisations after an AMI (re)login")
POP_LATENCY = Histogram(
    "cti_pop_latency_seconds", "AgentCalled received to screen pop handed to every sink",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
PUSHES = Counter("cti_pushes_total", "Envelopes handed to a transport", ["transport"])
LIVE_CALLS = Gauge("cti_live_calls", "Calls the model holds now")
AMI_CONNECTED = Gauge("cti_ami_connected", "1 while logged in to the AMI")
COMPONENT_UP = Gauge("cti_component_up", "1 while a part /healthz checks is up (ami, redis, mqtt, each task)",
                     ["component"])
ROUTING_OUTCOMES = Counter(
    "cti_routing_outcomes_total", "CTI routing mode: what this server's routing steps came to (offered, answered, "
    "abandoned_hold, abandoned_ringing, rona, gone, fallback, offer_failed, offer_expired, redis_errors)",
    ["outcome"])
