"""convserve_server: the convserve gRPC server and its engine.

``convserve_server.engine`` is a plain numpy library (no gRPC); ``convserve_server.app`` builds
and runs the server.
"""

__version__ = "0.1.0"
