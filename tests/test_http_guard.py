"""The HTTP gate: Host allow-list, CORS off by default, the API key off loopback."""

from __future__ import annotations

import argparse

import pytest
from starlette.testclient import TestClient

from engine.cli import main as silica
from engine.http_guard import parse_json
from engine.openai_schema import ApiError
from engine.serve_command import add_serve_parser, settings_from_args
from engine.server import make_app
from engine.server_settings import ServerSettings, host_name, hosts_for


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8080", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]:8080", "::1"),
        ("Evil.Example.:80", "evil.example"),
        ("[::1", ""),
        ("", ""),
    ],
)
def test_host_names_are_read_without_port_or_brackets(header, name):
    assert host_name(header) == name


def test_allowed_hosts_follow_the_bound_address():
    assert hosts_for("127.0.0.1") == (("127.0.0.1", "localhost", "::1"), False)
    assert hosts_for("192.168.1.5", ("silica.lan",)) == (
        ("192.168.1.5", "silica.lan"),
        False,
    )
    hosts, any_ip = hosts_for("0.0.0.0")
    assert any_ip and set(hosts) == {"localhost", "127.0.0.1", "::1"}


@pytest.fixture(scope="module")
def app(engine, model):
    return make_app(engine, {"tiny": model})


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost", 200),
        ("127.0.0.1:8080", 200),
        ("[::1]:8080", 200),
        ("evil.example", 400),  # a rebinding page's own name
        ("127.0.0.1.evil.example", 400),
        ("192.168.1.5", 400),  # bound to loopback: no other address
    ],
)
def test_the_host_header_is_checked_on_every_route(app, host, status):
    with TestClient(app, base_url="http://localhost") as http:
        for path in ("/health", "/v1/models"):
            response = http.get(path, headers={"Host": host})
            assert response.status_code == status
        if status == 400:
            assert response.json()["error"]["code"] == "invalid_host"


def test_a_wildcard_bind_takes_any_ip_and_the_names_it_is_given(engine, model):
    hosts, any_ip = hosts_for("0.0.0.0", ("*.silica.lan",))
    settings = ServerSettings(allowed_hosts=hosts, any_ip_host=any_ip)
    with TestClient(make_app(engine, {"tiny": model}, settings)) as http:
        for host, status in [
            ("10.0.0.7:8080", 200),
            ("[fe80::1]:8080", 200),
            ("box.silica.lan", 200),
            ("silica.lan.evil.example", 400),
            ("evil.example", 400),
        ]:
            assert http.get("/health", headers={"Host": host}).status_code == status


def test_cors_is_off_unless_an_origin_is_given(engine, model, app):
    preflight = {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    with TestClient(app, base_url="http://localhost") as http:
        response = http.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
        get = http.get("/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in get.headers
    settings = ServerSettings(cors_origins=("https://app.example",))
    with TestClient(
        make_app(engine, {"tiny": model}, settings), base_url="http://localhost"
    ) as http:
        good = preflight | {"Origin": "https://app.example"}
        response = http.options("/v1/chat/completions", headers=good)
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        bad = http.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in bad.headers
    with pytest.raises(ValueError, match="CORS origin"):
        ServerSettings(cors_origins=("app.example",))


@pytest.mark.parametrize("where", [["--host", "0.0.0.0"], ["--share"]])
def test_serving_beyond_loopback_needs_an_api_key(where, capsys, monkeypatch):
    monkeypatch.delenv("SILICA_API_KEY", raising=False)
    assert silica(["serve", "--no-ui", *where]) == 2  # before any model loads
    error = capsys.readouterr().err
    assert "without an API key" in error and "--insecure-no-api-key" in error


def test_flags_build_the_server_settings():
    settings = settings_from_args(
        serve_args(
            "--host",
            "0.0.0.0",
            "--api-key",
            "k",
            "--allowed-host",
            "silica.lan",
            "--cors-origin",
            "https://app.example",
        )
    )
    assert settings.api_key == "k" and settings.any_ip_host
    assert "silica.lan" in settings.allowed_hosts
    assert settings.cors_origins == ("https://app.example",)
    shared = settings_from_args(serve_args("--share", "--insecure-no-api-key"))
    assert "*.gradio.live" in shared.allowed_hosts and shared.api_key is None
    assert serve_args("--insecure-no-api-key").insecure_no_api_key


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"t": NaN}', "NaN is not valid JSON"),
        (b'{"t": -Infinity}', "Infinity is not valid JSON"),
        (b'{"t": 1e999}', "out of range"),
        (b'{"t": "\xff"}', "not valid UTF-8"),
        (b'{"t": "\xed\xa0\x80"}', "not valid UTF-8"),  # a surrogate, UTF-8 encoded
        ('{"t": 1}'.encode("utf-16"), "not valid UTF-8"),
        (b'\xef\xbb\xbf{"t": 1}', "not valid JSON"),  # a byte-order mark
        (b'{"t": "\\ud800"}', "lone surrogate"),
        (b'{"\\udfff": 1}', "lone surrogate"),
        (b'{"t": [["\\ud83d"]]}', "lone surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"t": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"[]", "must be a JSON object"),
    ],
)
def test_bodies_must_be_strict_json(raw, message):
    with pytest.raises(ApiError, match=message) as e:
        parse_json(raw)
    assert e.value.status == 400


def test_valid_unicode_passes():
    body = parse_json('{"t": "猫 \\ud83d\\ude00 😀"}'.encode())
    assert body == {"t": "猫 😀 😀"}
