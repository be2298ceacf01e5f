"""The ``adamax-ps`` command line (serve, cluster, demo, inspect, checkpoint,
health): it wires the server, the examples and the probes together."""
