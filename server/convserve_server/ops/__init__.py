"""Operations: structured logs, Prometheus metrics and the malloc settings. Imports nothing above it."""
