"""Generated protobuf and gRPC modules for the heml.v1 wire contract (``make proto``)."""
