"""The web UI app: construction, mounting on the API server, flags, i18n, Models tab."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from engine import ModelPool
from engine.serve_command import add_serve_parser
from engine.server import make_app
from webui import models_handlers as mh
from webui.app import build_app, mount_ui
from webui.i18n import STRINGS, make_i18n
from webui.settings import UISettings

WEBUI = Path(__file__).resolve().parent.parent / "webui"


@pytest.fixture(scope="module")
def pool(engine, model, tiny_model_dir):
    return ModelPool(engine, {"tiny": model}, roots=(tiny_model_dir.parent,))


@pytest.fixture
def settings(tmp_path):
    return UISettings(
        default_model="tiny",
        arena_db=tmp_path / "arena.sqlite3",
        export_dir=tmp_path / "exports",
        search_dirs=(tmp_path / "models",),
    )


def mounted(engine, pool, settings, **options) -> TestClient:
    app = make_app(engine, pool)
    return TestClient(
        mount_ui(app, pool, default_model="tiny", settings=settings, **options),
        base_url="http://localhost",
    )


def test_the_app_has_its_tabs_and_a_bounded_queue(pool, settings):
    demo = build_app(pool, settings, make_i18n())
    config = demo.get_config_file()
    ids = {c["props"].get("elem_id") for c in config["components"]}
    assert {"tab-chat", "tab-compare", "tab-models", "chat-input", "compare-run"} <= ids
    assert demo._queue.max_size == settings.queue_size
    generations = [fn for fn in demo.fns.values() if fn.concurrency_id == "engine"]
    assert len(generations) >= 4  # send, enter, regenerate, compare
    assert all(fn.concurrency_limit == 1 for fn in generations)


def test_one_port_serves_the_ui_and_the_api(engine, pool, settings):
    with mounted(engine, pool, settings) as client:
        page = client.get("/")
        assert page.status_code == 200 and "<html" in page.text
        assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
        assert client.get("/health").json()["status"] == "ok"
        config = client.get("/config").json()
        assert config["i18n_translations"]["zh-CN"]["silica_tab_chat"] == "对话"


def test_a_password_guards_the_ui_but_not_the_api(engine, pool, settings):
    with mounted(engine, pool, settings, password="s3cret") as client:
        assert client.get("/config").status_code == 401
        assert client.get("/v1/models").status_code == 200
        bad = client.post("/login", data={"username": "x", "password": "wrong"})
        assert bad.status_code == 400
        good = client.post("/login", data={"username": "anyone", "password": "s3cret"})
        assert good.status_code == 200
        assert client.get("/config").status_code == 200


def test_only_chat_exports_may_be_served(engine, pool, settings, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("nope")
    with mounted(engine, pool, settings) as client:
        for path in (secret, Path("/etc/passwd"), settings.arena_db):
            response = client.get(f"/gradio_api/file={path.resolve()}")
            assert response.status_code in (403, 404)


def test_silica_serve_finds_the_ui_through_its_entry_point():
    [entry] = entry_points(group="silica.ui")
    assert entry.load() is mount_ui


def test_serve_flags():
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(["serve"])
    assert (args.no_ui, args.share, args.host) == (False, False, "127.0.0.1")
    args = parser.parse_args(["serve", "--no-ui", "--share", "--ui-password", "pw"])
    assert (args.no_ui, args.share, args.ui_password) == (True, True, "pw")


def test_every_label_key_has_english_and_chinese():
    used = set()
    for path in WEBUI.glob("*_tab.py"):
        used |= set(re.findall(r'\bt\("([a-z_]+)"\)', path.read_text()))
    used |= {"tab_chat", "tab_compare", "tab_models", "tab_safety", "subtitle"}
    assert used <= set(STRINGS), used - set(STRINGS)
    assert all(en and zh for en, zh in STRINGS.values())
    tables = make_i18n().translations_dict
    assert (
        tables["zh"]["silica_send"] == "发送" and tables["en"]["silica_send"] == "Send"
    )
    with pytest.raises(KeyError, match="nope"):
        make_i18n()("nope")


def test_models_tab_lists_loads_and_unloads(engine, pool, settings, tiny_model_dir):
    table = mh.models_table(pool, settings)
    assert "tiny" in set(table["loaded"])
    assert "GB" in mh.memory_gauge(pool, settings)
    assert "tiny" in mh.model_choices(pool, settings)
    message = mh.load(pool, str(tiny_model_dir))
    name = tiny_model_dir.name
    assert name in message and name in pool
    assert name in set(mh.loaded_table(pool)["name"])
    assert mh.unload(pool, name) == f"Unloaded {name}."
    with pytest.raises(ValueError, match="not loaded"):
        mh.unload(pool, name)


def test_models_tab_converts_and_refuses_bad_input(pool, settings, tiny_model_dir):
    gguf = tiny_model_dir.parent / "tiny.gguf"
    assert gguf.is_file()
    message = mh.convert(str(gguf), "", "8", "float32", False, settings=settings)
    out = settings.search_dirs[0] / "tiny-8bit"
    assert str(out) in message and (out / "silica-manifest.json").exists()
    assert str(out.resolve()) in set(mh.models_table(pool, settings)["name"])
    with pytest.raises(FileExistsError, match="exists"):
        mh.convert(str(gguf), str(out), "8", "auto", False, settings=settings)
    with pytest.raises(ValueError, match="path"):
        mh.convert(" ", "", "keep", "auto", False, settings=settings)
    with pytest.raises(ValueError, match="catalog"):
        mh.pull("not-in-the-catalog")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            httpx.get(f"{url}/health", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError(url)


@pytest.mark.parametrize("ui", [True, False], ids=["with-ui", "no-ui"])
def test_silica_serve_serves_the_ui_unless_told_not_to(tiny_model_dir, tmp_path, ui):
    port = free_port()
    command = [sys.executable, "-m", "engine.cli", "serve", "--port", str(port)]
    command += [
        "--model",
        f"tiny={tiny_model_dir}",
        "--arena-db",
        str(tmp_path / "a.db"),
    ]
    env = {**os.environ, "SILICA_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen(
        [*command, *([] if ui else ["--no-ui"])],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process)
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "tiny"
        page = httpx.get(f"{url}/")
        assert page.status_code == (200 if ui else 404)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert f"Silica API:    {url}/v1" in stderr
    assert (f"Silica web UI: {url}/" in stderr) is ui
