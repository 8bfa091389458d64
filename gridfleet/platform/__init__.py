"""The fleet services: ingress, rounds, shards, dispatch, coordinator, the one-process loop and the
fleet plan. They reach the exchange only through :mod:`gridfleet.exchange`'s link interface."""
