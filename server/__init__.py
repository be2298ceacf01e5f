"""adamax-ps server: sharded Adamax state, the parameter service, and its transports."""
