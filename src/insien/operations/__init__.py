"""What an operator watches Insien by: lifecycle events and their webhooks, Prometheus
metrics, and structured logs. Below the core: it knows no HTTP framework, no Docker, and no
sandbox beyond the ids and fields the core hands it."""
