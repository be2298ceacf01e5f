"""adamax-ps wire protocol: versioned protobuf messages and their tensor codec."""
