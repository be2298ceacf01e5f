"""Examples that use the public client: the demo behind ``adamax-ps demo``."""
