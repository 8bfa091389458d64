"""Everything that talks to the exchange: protocol models, the Redis link, ingress,
coordinator and the embedded exchange simulator."""
