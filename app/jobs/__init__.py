"""The durable job engine: one table for all background work, claimed under a lease.

Domains register handlers by kind (``registry.handler``) and periodic ticks
(``registry.periodic``) at start; the engine imports no domain.
"""
