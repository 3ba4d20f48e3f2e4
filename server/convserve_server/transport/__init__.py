"""The gRPC side: the servicer's routing table, the four ways a tensor travels (unary, chunked,
shared memory, stream), request decoding and response encoding, the interceptors (call limits,
authentication) and the mapping of errors to gRPC statuses. Imports admission, ops and the engine."""
