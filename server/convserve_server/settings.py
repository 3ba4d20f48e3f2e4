"""One validated settings object for the server, filled from flags and ``CONVSERVE_*`` variables.

Every field has a default, a flag (``--max-elements``) and an environment variable
(``CONVSERVE_MAX_ELEMENTS``); a flag wins over the variable, the variable over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

MIB = 1024 * 1024


class SettingsError(ValueError):
    """An invalid setting; its message is one line naming the setting."""


@dataclass(frozen=True)
class Settings:
    """Server settings (see the README's settings table)."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=50051, metadata={"help": "port to listen on (0: any free port)"})
    workers: int = field(default=os.cpu_count() or 1, metadata={"help": "threads computing requests"})
    max_concurrent_requests: int = field(
        default=2 * (os.cpu_count() or 1), metadata={"help": "requests computing or queued at once; more get RESOURCE_EXHAUSTED"}
    )
    max_elements: int = field(default=2**28, metadata={"help": "largest number of elements of any tensor"})
    max_request_bytes: int = field(default=512 * MIB, metadata={"help": "largest request message in bytes"})
    max_output_bytes: int = field(default=1024 * MIB, metadata={"help": "largest result in bytes"})
    fftw_threads: int = field(default=os.cpu_count() or 1, metadata={"help": "FFTW threads per transform"})
    memory_budget_bytes: int = field(default=4096 * MIB, metadata={"help": "estimated working memory of all admitted requests together"})
    max_concurrent_streams: int = field(default=64, metadata={"help": "HTTP/2 streams per connection (bounds what can arrive before admission)"})
    fftw_wisdom: str = field(default="", metadata={"help": "FFTW wisdom file: loaded at start, saved at shutdown (empty: none)"})
    malloc_retain_bytes: int = field(
        default=32 * MIB, metadata={"help": "glibc malloc keeps freed blocks up to this size for reuse instead of re-faulting pages (0: glibc defaults)"}
    )
    fftw_background_planning_seconds: float = field(
        default=0.0, metadata={"help": "FFTW_MEASURE time limit for each new large transform shape, planned off the request path (0: off)"}
    )
    calibration: str = field(default="", metadata={"help": "cost-model file written by `convserve calibrate` (empty: its default path)"})
    busy_pushback_ms: int = field(default=50, metadata={"help": "retry pushback sent with RESOURCE_EXHAUSTED when the server is full"})
    grace_seconds: float = field(default=10.0, metadata={"help": "time in-flight calls get to finish on shutdown"})
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})
    log_format: str = field(default="json", metadata={"help": "json (one object per line) or text"})
    metrics_port: int = field(default=9464, metadata={"help": "Prometheus /metrics port on host (-1: off, 0: any free port)"})
    tls_cert: str = field(default="", metadata={"help": "PEM certificate chain file: enables TLS"})
    tls_key: str = field(default="", metadata={"help": "PEM private key file of tls_cert"})
    tls_client_ca: str = field(default="", metadata={"help": "PEM CA file: clients must present a certificate it signed (mTLS)"})
    allow_shared_memory: bool = field(default=False, metadata={"help": "accept same-host shared-memory calls (clients' regions named convserve*)"})
    auth_token: str = field(default="", metadata={"help": "bearer token clients must send (authorization: Bearer ...); empty: off"})
    weights_cache_bytes: int = field(
        default=1024 * MIB, metadata={"help": "registered weights (and their prepared forms) kept at most; least recently used evicted first"}
    )
    weights_cache_entries: int = field(
        default=4096, metadata={"help": "registered weights kept at most, by count (each entry also counts its overhead in bytes)"}
    )
    idle_timeout_seconds: float = field(
        default=30.0, metadata={"help": "chunked and streaming calls that send nothing for this long end with DEADLINE_EXCEEDED and free what they hold"}
    )
    max_connection_age_seconds: float = field(
        default=0.0,
        metadata={
            "help": "after this long a connection is asked to close (GOAWAY; its calls in progress finish) so that clients "
            "look the name up again and reach new replicas (0: never)"
        },
    )
    max_waiting_streams: int = field(
        default=16, metadata={"help": "chunked uploads and streams waiting for data at once (they hold no compute slot); more get RESOURCE_EXHAUSTED"}
    )
    waiting_budget_bytes: int = field(default=1024 * MIB, metadata={"help": "bytes that streams waiting for data may hold together (their declared inputs)"})
    max_concurrent_calls: int = field(default=256, metadata={"help": "calls in progress on the whole server, of any kind; more get RESOURCE_EXHAUSTED"})
    max_calls_per_identity: int = field(default=64, metadata={"help": "calls in progress per authenticated identity (bearer token or client certificate)"})
    fftw_max_planned_shapes: int = field(
        default=512, metadata={"help": "transform shapes FFTW plans and wisdom are kept for; past it new shapes get uncached ESTIMATE plans"}
    )
    fftw_planner_effort: str = field(
        default="FFTW_ESTIMATE", metadata={"help": "FFTW planner flag on the request path: FFTW_ESTIMATE, FFTW_MEASURE, FFTW_PATIENT or FFTW_EXHAUSTIVE"}
    )
    fftw_planning_timelimit: float = field(default=0.0, metadata={"help": "seconds FFTW may spend planning one transform (0 or less: no limit)"})
    fftw_cache_bytes: int = field(default=512 * MIB, metadata={"help": "bytes of idle FFTW plan buffers kept for reuse"})
    layer_cache_weights: int = field(
        default=16, metadata={"help": "inline ConvLayer weights whose prepared forms (packed matrices, spectra, sessions) are kept (0: off)"}
    )
    layer_cache_bytes: int = field(default=256 * MIB, metadata={"help": "bytes the prepared forms of inline ConvLayer weights may hold together"})
    layer_onnxruntime: bool = field(default=True, metadata={"help": "float32 ConvLayer calls may run on ONNX Runtime (off: the numpy paths only)"})
    layer_ort_spin: bool = field(default=True, metadata={"help": "ONNX Runtime's threads spin between runs (faster calls, busier cores)"})

    def __post_init__(self) -> None:
        positive = (
            "workers",
            "max_concurrent_requests",
            "max_elements",
            "max_request_bytes",
            "max_output_bytes",
            "fftw_threads",
            "memory_budget_bytes",
            "max_concurrent_streams",
            "busy_pushback_ms",
            "weights_cache_bytes",
            "weights_cache_entries",
            "max_waiting_streams",
            "waiting_budget_bytes",
            "max_concurrent_calls",
            "max_calls_per_identity",
            "fftw_max_planned_shapes",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be between 0 and 65535, got {self.port}")
        if self.max_concurrent_requests < self.workers:
            raise SettingsError(f"max_concurrent_requests ({self.max_concurrent_requests}) must be at least workers ({self.workers})")
        if self.malloc_retain_bytes < 0:
            raise SettingsError(f"malloc_retain_bytes must be >= 0, got {self.malloc_retain_bytes}")
        if self.fftw_background_planning_seconds < 0:
            raise SettingsError(f"fftw_background_planning_seconds must be >= 0, got {self.fftw_background_planning_seconds}")
        if self.max_connection_age_seconds < 0:
            raise SettingsError(f"max_connection_age_seconds must be >= 0, got {self.max_connection_age_seconds}")
        if self.idle_timeout_seconds <= 0:
            raise SettingsError(f"idle_timeout_seconds must be > 0, got {self.idle_timeout_seconds}")
        for name in ("fftw_cache_bytes", "layer_cache_weights", "layer_cache_bytes"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0, got {getattr(self, name)}")
        effort = self.fftw_planner_effort.strip().upper().removeprefix("FFTW_")
        if effort not in ("ESTIMATE", "MEASURE", "PATIENT", "EXHAUSTIVE"):
            raise SettingsError(f"fftw_planner_effort must be FFTW_ESTIMATE, FFTW_MEASURE, FFTW_PATIENT or FFTW_EXHAUSTIVE, got {self.fftw_planner_effort!r}")
        if self.grace_seconds < 0:
            raise SettingsError(f"grace_seconds must be >= 0, got {self.grace_seconds}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if not self.host:
            raise SettingsError("host must not be empty")
        if not -1 <= self.metrics_port <= 65535:
            raise SettingsError(f"metrics_port must be -1 (off) or between 0 and 65535, got {self.metrics_port}")
        if self.log_format not in ("json", "text"):
            raise SettingsError(f"log_format must be json or text, got {self.log_format!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("tls_cert and tls_key must be given together")
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise SettingsError(f"{name}: no such file {path!r}")

    @property
    def is_loopback(self) -> bool:
        """Whether the server listens on a loopback address only."""
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


def env_name(name: str) -> str:
    """The environment variable of a setting."""
    return f"CONVSERVE_{name.upper()}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per setting (default: unset, so the environment or default applies)."""
    for item in dataclasses.fields(Settings):
        flag = "--" + item.name.replace("_", "-")
        help_text = f"{item.metadata['help']} (env {env_name(item.name)}, default {item.default})"
        if str(item.type) == "bool":  # --flag / --no-flag
            parser.add_argument(flag, dest=item.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        kind = {"int": int, "float": float, "str": str}[str(item.type)]
        parser.add_argument(flag, dest=item.name, type=kind, default=None, help=help_text)


def _parse_bool(text: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


def load(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from flags (``None`` values ignored) over ``CONVSERVE_*`` variables over defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for item in dataclasses.fields(Settings):
        kind: Any = {"int": int, "float": float, "str": str, "bool": _parse_bool}[str(item.type)]
        flag_value = (flags or {}).get(item.name)
        if flag_value is not None:
            values[item.name] = flag_value
        elif env_name(item.name) in environ:
            text = environ[env_name(item.name)]
            if kind is _parse_bool and not text.strip():
                continue  # an empty switch (a blank compose entry) keeps its default
            try:
                values[item.name] = kind(text)
            except ValueError:
                raise SettingsError(f"{env_name(item.name)}={text!r} is not a valid {item.type}") from None
    return Settings(**values)
