"""What a request may load: models in the allow-listed roots, never a download."""

from __future__ import annotations

import os
import shutil

import pytest

from engine import ModelPool, catalog_names
from engine.model_roots import allowed_source, inside_roots
from webui import chat_handlers as h
from webui import models_handlers as mh
from webui.settings import UISettings


@pytest.fixture
def roots(tmp_path, tiny_model_dir):
    """``models/`` with a copy of the tiny model, a secret outside, an empty cache."""
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "tiny-copy")
    outside = tmp_path / "outside"
    shutil.copytree(tiny_model_dir, outside / "secret-model")
    (tmp_path / "cache").mkdir()
    return models, outside, tmp_path / "cache"


def test_a_path_inside_a_root_resolves_to_its_real_location(roots):
    models, _, cache = roots
    real = (models / "tiny-copy").resolve()
    assert inside_roots(models / "tiny-copy", [models]) == real
    assert allowed_source(str(models / "." / "tiny-copy"), [models], cache) == str(real)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda m, o: f"{m}/../outside/secret-model", id="dots"),
        pytest.param(lambda m, o: str(o / "secret-model"), id="absolute"),
        pytest.param(lambda m, o: "~/../../etc", id="home"),
    ],
)
def test_paths_that_leave_the_roots_are_refused(roots, make):
    models, outside, cache = roots
    with pytest.raises(ValueError, match="outside the model folders"):
        allowed_source(make(models, outside), [models], cache)


def test_symlinks_out_of_a_root_are_refused(roots):
    models, outside, cache = roots
    os.symlink(outside / "secret-model", models / "link-out")
    with pytest.raises(ValueError, match="outside the model folders"):
        allowed_source(str(models / "link-out"), [models], cache)
    os.symlink(models / "loop", models / "loop")
    with pytest.raises(ValueError, match="does not exist"):
        inside_roots(models / "loop", [models])


def test_downloads_are_never_made_on_request(roots):
    models, _, cache = roots
    name = catalog_names()[0]
    with pytest.raises(ValueError, match="not downloaded yet; pull it first"):
        allowed_source(name, [models], cache)
    for src in ("HuggingFaceTB/SmolLM2-135M", "https://example.com/m.gguf", "nope"):
        with pytest.raises(ValueError, match="never download"):
            allowed_source(src, [models], cache)
    assert list(cache.iterdir()) == []  # nothing fetched or converted


def test_the_pool_loads_requests_from_its_roots_only(engine, roots):
    models, outside, cache = roots
    pool = ModelPool(engine, roots=(models,), cache_dir=cache)
    assert pool.get_or_load(str(models / "tiny-copy")).name == "tiny-copy"
    assert pool.get_or_load("tiny-copy") is pool["tiny-copy"]  # by name
    with pytest.raises(ValueError, match="outside"):
        pool.get_or_load(str(outside / "secret-model"))
    assert pool.load(str(outside / "secret-model")).name == "secret-model"  # operator
    pool.unload("tiny-copy")
    pool.unload("secret-model")


def test_the_chat_picker_refuses_a_hub_repo_with_a_warning(engine, model, roots):
    models, _, cache = roots
    pool = ModelPool(engine, {"tiny": model}, roots=(models,), cache_dir=cache)
    settings = UISettings(
        default_model="tiny", arena_db=cache / "a.db", export_dir=cache / "exports"
    )
    session = h.ChatSession()
    h.add_user_turn(session, "hello")
    controls = h.ChatControls(
        model="someone/some-model",
        system="",
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        max_tokens=4,
        seed=-1,
        stop="",
        speculation="off",
        draft=None,
    )
    views = list(h.respond(pool, session, controls, settings=settings))
    assert "never download" in views[-1].warning and session.turns == []
    assert list(pool) == ["tiny"]


def test_the_models_tab_converts_only_into_its_folders(engine, model, roots):
    models, outside, cache = roots
    pool = ModelPool(engine, {"tiny": model}, roots=(models,), cache_dir=cache)
    settings = UISettings(
        default_model="tiny",
        arena_db=cache / "a.db",
        export_dir=cache / "exports",
        search_dirs=(models,),
    )
    gguf = str(outside / "secret-model" / "model.safetensors")
    for out in (str(outside / "new"), str(models / ".." / "escaped")):
        with pytest.raises(ValueError, match="Convert into one of the model folders"):
            mh.convert(gguf, out, "keep", "auto", True, settings=settings)
    assert not (outside / "new").exists() and not (models.parent / "escaped").exists()
    assert pool.inside_roots(models / "tiny-copy") == (models / "tiny-copy").resolve()
