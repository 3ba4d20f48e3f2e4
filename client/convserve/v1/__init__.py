"""Generated protobuf and gRPC code (scripts/generate_proto.py). Do not edit."""
