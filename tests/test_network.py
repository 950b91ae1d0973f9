"""Every network call has a timeout and names its endpoint; offline mode is honoured at once. The endpoint of these
tests accepts connections and never answers (tests/conftest.py `silent_hub`, 0.5 s per request): the only bound on
time asserted is a generous one, and what is checked is how many connections were made and what the error says."""

from __future__ import annotations

import time

import pytest

from optimum_si.network import NetworkError
from tests.fake_hub import CharTokenizer

# Far above what any of these calls takes with a 0.5 s timeout (one probe), far below the minutes a call without a
# timeout would hang (the hang never ends; the libraries' own retries alone take more than a minute).
GENEROUS_S = 60


def _fails_fast(call, *fragments):
    started = time.monotonic()
    with pytest.raises(NetworkError) as raised:
        call()
    assert time.monotonic() - started < GENEROUS_S
    for fragment in fragments:
        assert fragment in str(raised.value), str(raised.value)
    return str(raised.value)


def test_a_named_dataset_on_an_endpoint_that_never_answers(silent_hub):
    from optimum_si.data.named_sets import calibration_ids

    message = _fails_fast(lambda: calibration_ids("wikitext2", CharTokenizer(), 2, 16, 0),
                          "Could not load the dataset 'Salesforce/wikitext'", silent_hub.url,
                          "did not answer within 0.5 s", "HF_ENDPOINT", "HF_HUB_OFFLINE=1", "local folder or file",
                          "$OPTIMUM_SI_NETWORK_TIMEOUT")
    assert len(message.splitlines()) == 1
    assert len(silent_hub.connections) == 1  # asked once; no retries of every file


def test_a_streamed_hub_model_and_a_hub_recipe_on_an_endpoint_that_never_answers(silent_hub, tmp_path):
    from optimum_si import SIConfig, SIPruner

    _fails_fast(lambda: SIPruner(method="magnitude").prune("alice/model", save_dir=tmp_path / "out"),
                "Could not download 'alice/model'", silent_hub.url, "did not answer within 0.5 s")
    _fails_fast(lambda: SIConfig.from_pretrained("alice/recipe"),
                "Could not download si_config.json of 'alice/recipe'", silent_hub.url)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_mode_is_honoured_at_once(silent_hub, monkeypatch, variable):
    """Set after the libraries were imported (as in a notebook): nothing is sent, waited for or retried."""
    from optimum_si.data.named_sets import calibration_ids

    monkeypatch.setenv(variable, "1")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set .*not in the datasets cache"):
        calibration_ids("alice/custom-texts", CharTokenizer(), 2, 16, 0)
    if variable == "HF_HUB_OFFLINE":
        from optimum_si import SIConfig

        with pytest.raises(OSError, match="Could not find si_config.json for 'alice/recipe'"):
            SIConfig.from_pretrained("alice/recipe")
    assert silent_hub.connections == []


def test_the_cache_still_serves_when_the_endpoint_is_down(fake_hub, monkeypatch, tmp_path):
    """A Hub that does not answer is not an error when what is needed is cached: the call runs offline."""
    import huggingface_hub.constants as hub_constants

    from optimum_si.data.named_sets import calibration_ids
    from tests.conftest import SilentEndpoint

    first = calibration_ids("alice/custom-texts", CharTokenizer(), 2, 16, 0)
    silent = SilentEndpoint()
    try:
        monkeypatch.setattr(hub_constants, "ENDPOINT", silent.url)
        monkeypatch.setenv("OPTIMUM_SI_NETWORK_TIMEOUT", "0.5")
        again = calibration_ids("alice/custom-texts", CharTokenizer(), 2, 16, 0)
    finally:
        silent.close()
    assert again[0].equal(first[0]) and len(silent.connections) == 1


@pytest.mark.parametrize("value", ["abc", "-5", "nan", "0"])
def test_a_bad_timeout_setting_names_the_variable(monkeypatch, value):
    from optimum_si.network import hub_access

    monkeypatch.setenv("OPTIMUM_SI_NETWORK_TIMEOUT", value)
    with pytest.raises(ValueError, match=f"OPTIMUM_SI_NETWORK_TIMEOUT='{value}' is not a number of seconds"):
        with hub_access("test"):
            pass


def test_answers_that_say_no_are_not_network_failures():
    import httpx2

    from optimum_si.network import is_network_failure

    assert is_network_failure(httpx2.ReadTimeout("slow")) == "timeout"
    assert is_network_failure(httpx2.ConnectError("refused")) == "unreachable"
    try:
        try:
            raise httpx2.ConnectTimeout("no answer")
        except httpx2.ConnectTimeout as inner:
            raise FileNotFoundError("not in the cache") from inner
    except FileNotFoundError as outer:
        assert is_network_failure(outer) == "timeout"  # found through what it was raised from
    assert is_network_failure(FileNotFoundError("404: no such repo")) is None
    assert is_network_failure(ValueError("bad split")) is None
