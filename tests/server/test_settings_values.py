"""Settings from variables: switches, limits and effort names parse as the README says."""

from __future__ import annotations

import pytest

from convserve_server import settings


def test_an_empty_switch_keeps_its_default() -> None:
    """A blank ``CONVSERVE_LAYER_ONNXRUNTIME=`` (a compose entry left empty) must not turn ONNX Runtime off."""
    loaded = settings.load({}, {"CONVSERVE_LAYER_ONNXRUNTIME": "", "CONVSERVE_LAYER_ORT_SPIN": " ", "CONVSERVE_ALLOW_SHARED_MEMORY": ""})
    assert loaded.layer_onnxruntime is True and loaded.layer_ort_spin is True and loaded.allow_shared_memory is False


@pytest.mark.parametrize(("text", "value"), [("0", False), ("false", False), ("No", False), ("off", False), ("1", True), ("TRUE", True), ("on", True)])
def test_switches_parse_any_case(text: str, value: bool) -> None:
    assert settings.load({}, {"CONVSERVE_LAYER_ONNXRUNTIME": text}).layer_onnxruntime is value


def test_an_unknown_switch_value_is_refused_naming_the_variable() -> None:
    with pytest.raises(settings.SettingsError, match="CONVSERVE_LAYER_ORT_SPIN"):
        settings.load({}, {"CONVSERVE_LAYER_ORT_SPIN": "sometimes"})


@pytest.mark.parametrize("text", ["-1", "0", "2.5"])
def test_any_planning_time_limit_is_accepted(text: str) -> None:
    """0 or less means no limit (FFTW's -1), as the engine reads it."""
    assert settings.load({}, {"CONVSERVE_FFTW_PLANNING_TIMELIMIT": text}).fftw_planning_timelimit == float(text)


@pytest.mark.parametrize("text", ["measure", "FFTW_PATIENT", "fftw_estimate"])
def test_effort_names_with_or_without_prefix(text: str) -> None:
    assert settings.load({}, {"CONVSERVE_FFTW_PLANNER_EFFORT": text}).fftw_planner_effort == text


def test_a_bogus_effort_is_refused_at_start() -> None:
    with pytest.raises(settings.SettingsError, match="fftw_planner_effort"):
        settings.load({}, {"CONVSERVE_FFTW_PLANNER_EFFORT": "bogus"})
