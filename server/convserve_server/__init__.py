"""convserve_server: the convserve gRPC server and its engine.

``convserve_server.engine`` is a plain numpy library (no gRPC); ``convserve_server.app`` builds
and runs the server.
"""

from importlib.metadata import version

# The distribution's version, which is the client's (importing convserve here would load grpc into the engine).
__version__ = version("convserve-server")

__all__ = ["__version__"]
