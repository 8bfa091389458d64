"""The gsy-e wire: channels, typed events and answers, outbound commands and their validation,
and the one link interface (:mod:`gridfleet.exchange.link`) its transports implement.

Nothing above this package knows which transport runs.
"""
