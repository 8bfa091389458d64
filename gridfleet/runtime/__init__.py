"""Process plumbing shared by every gridfleet process: child-process supervision, private Redis
servers, logging, Prometheus metrics and interpreter tuning. Knows nothing of the wire or the fleet."""
