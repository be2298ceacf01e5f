"""The gRPC transport: the servicer, its error mapping, and the server."""
