"""Admission: what a call will cost in memory (estimates), the limits on input and output sizes,
the registered-weights store and the worker pool that admits work by memory and slots.
Imports the engine and ops, never the transport."""
