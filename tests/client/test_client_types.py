"""The client's typed surface: explicit keyword options, return_info overloads, and the weights flow."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

import convserve
from convserve import _base
from convserve.errors import NotFoundError, UnavailableError

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = (
    "timeout",
    "token",
    "root_certificates",
    "client_certificate",
    "client_key",
    "tls",
    "retry",
    "max_message_bytes",
    "load_balancing",
    "chunk_threshold",
    "shared_memory",
    "shared_memory_threshold",
)
RETURN_INFO_METHODS = ("convolve", "correlate", "conv_layer", "conv_transpose")

SNIPPET = """
import numpy as np
import convserve

def sync(client: convserve.Client, flag: bool) -> None:
    a = np.ones(3)
    reveal_type(client.convolve(a, a))
    reveal_type(client.convolve(a, a, return_info=True))
    reveal_type(client.correlate(a, a, "same", return_info=False))
    reveal_type(client.conv_layer(a, a, return_info=True))
    reveal_type(client.conv_transpose(a, a, return_info=flag))

async def asynchronous(client: convserve.AsyncClient) -> None:
    a = np.ones(3)
    reveal_type(await client.convolve(a, a))
    reveal_type(await client.conv_transpose(a, a, return_info=True))

convserve.AsyncClient(tokn="x")
"""
ARRAY = "numpy.ndarray"
WITH_INFO = "tuple[numpy.ndarray"


@pytest.mark.parametrize("cls", [convserve.Client, convserve.AsyncClient])
def test_every_option_is_an_explicit_typed_keyword(cls: type) -> None:
    parameters = inspect.signature(cls).parameters
    assert list(parameters) == ["target", *OPTIONS]
    assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY and parameters[name].annotation != inspect.Parameter.empty for name in OPTIONS)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    with pytest.raises(TypeError, match="tokn"):
        cls("127.0.0.1:1", tokn="x")


@pytest.mark.parametrize("cls", [convserve.Client, convserve.AsyncClient])
@pytest.mark.parametrize("name", RETURN_INFO_METHODS)
def test_return_info_methods_are_overloaded(cls: type, name: str) -> None:
    overloads = typing.get_overloads(getattr(cls, name))
    assert [str(o.__annotations__["return"]) for o in overloads] == ["npt.NDArray[Any]", "WithInfo", "npt.NDArray[Any] | WithInfo"]
    assert [str(o.__annotations__["return_info"]) for o in overloads] == ["Literal[False]", "Literal[True]", "bool"]
    assert "Any" != str(getattr(cls, name).__annotations__["return"])


def test_mypy_sees_an_array_or_an_array_with_its_info(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"), "--no-error-summary"]
    result = subprocess.run([*command, str(snippet)], capture_output=True, text=True, env={**os.environ, "MYPYPATH": str(ROOT / "client")}, timeout=300)
    revealed = re.findall(r'snippet\.py:\d+: note: Revealed type is "(.*)"', result.stdout)
    assert len(revealed) == 7, result.stdout
    assert [kind.startswith(WITH_INFO) for kind in revealed] == [False, True, False, True, False, False, True], revealed
    assert all(ARRAY in kind and "Any" != kind for kind in revealed)
    assert " | " + WITH_INFO in revealed[4]  # a bool that is not a literal: either
    assert re.search(r'snippet\.py:\d+: error: Unexpected keyword argument "tokn" for "AsyncClient"', result.stdout), result.stdout


def _layer_build(weight: object, bias: object) -> tuple[object, object]:
    return ("request", weight, bias)  # type: ignore[return-value]


def test_weights_flow_registers_again_once_then_sends_the_weights_inline() -> None:
    weight, bias = np.ones((1, 1, 3)), np.zeros(1)
    stored = convserve.Weights("abc", weight, bias)
    flow = _base.weights_flow(stored, None, _layer_build)
    assert next(flow) == ("request", stored, None)
    step = flow.throw(NotFoundError("evicted"))
    assert isinstance(step, _base.Register) and step.weight is weight and step.bias is bias
    fresh = convserve.Weights("abc", weight, bias)
    assert flow.send(fresh) == ("request", fresh, None)
    inline = flow.throw(NotFoundError("another replica"))
    assert inline == ("request", weight, bias)
    with pytest.raises(StopIteration) as done:
        flow.send("result")
    assert done.value.value == "result"


def test_weights_flow_returns_the_first_answer_and_raises_other_errors() -> None:
    stored = convserve.Weights("abc", np.ones((1, 1, 3)))
    flow = _base.weights_flow(stored, None, _layer_build)
    next(flow)
    with pytest.raises(StopIteration) as done:
        flow.send("result")
    assert done.value.value == "result"
    flow = _base.weights_flow(stored, None, _layer_build)
    next(flow)
    with pytest.raises(UnavailableError):
        flow.throw(UnavailableError("down"))


def test_weights_flow_without_registered_weights_raises_not_found() -> None:
    flow = _base.weights_flow(np.ones((1, 1, 3)), None, _layer_build)
    assert next(flow)[0] == "request"
    with pytest.raises(NotFoundError):
        flow.throw(NotFoundError("no such thing"))
