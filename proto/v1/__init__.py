"""Version 1 of the adamax-ps protocol: generated messages and service stubs."""
