import warnings

import pytest

from vqbench.errors import UserError
from vqbench.registry import METHODS, TASKS, Entry, Registry, create_method, list_methods, load_plugin


def make_registry():
    return Registry("method", "vqbench.tests.nonexistent-group")


def test_register_create_list_with_presets():
    reg = make_registry()

    @reg.register("toy", version=2, paper="1234.5678", family="toy", description="d", scale=1.0)
    @reg.register("toy-big", scale=10.0)
    class Toy:
        def __init__(self, dim: int, scale: float = 1.0) -> None:
            self.dim, self.scale = dim, scale

    assert reg.list() == ["toy", "toy-big"]
    assert reg.list("toy-*") == ["toy-big"]
    assert reg.create("toy-big", dim=3).scale == 10.0
    assert reg.create("toy", dim=3, scale=2.5).scale == 2.5
    entry = reg.get("toy")
    assert (entry.version, entry.paper, entry.family, entry.defaults) == (2, "1234.5678", "toy", {"scale": 1.0})
    assert entry.paper_url == "https://arxiv.org/abs/1234.5678"
    assert reg.get("toy-big").defaults == {"scale": 10.0} and reg.get("toy-big").builder is Toy


def test_unknown_name_suggests_close_matches():
    reg = make_registry()
    reg.register("vq-ema")(lambda dim: dim)
    with pytest.raises(UserError, match="did you mean vq-ema"):
        reg.get("vq-emma")
    with pytest.raises(UserError, match="vqbench list methods"):
        reg.get("zzzzzz")


def test_unknown_param_suggests_close_matches():
    reg = make_registry()

    @reg.register("m")
    def build(dim: int, beta: float = 0.25):
        return beta

    with pytest.raises(UserError, match="no parameter 'bta': did you mean beta"):
        reg.create("m", dim=2, bta=1)


def test_collision_names_both_sources():
    reg = make_registry()
    reg.register("same")(lambda dim: 1)

    def other(dim):
        return 2

    with pytest.raises(UserError, match="registered twice"):
        reg.register("same")(other)


def test_default_that_is_not_a_parameter_fails():
    reg = make_registry()
    with pytest.raises(UserError, match="not parameters"):
        reg.register("bad", nope=1)(lambda dim: dim)


def test_builtins_come_from_entry_points():
    assert "vq" in list_methods()
    assert "gmm" in TASKS.list()
    assert METHODS.get("vq").source == "vqbench"
    q = create_method("vq", dim=4, codebook_size=8)
    assert q.codebook().shape == (8, 4)
    assert isinstance(METHODS.get("vq"), Entry)


def test_file_plugin_registers_with_source_and_is_idempotent(tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(
        "from vqbench.registry import register_method\n"
        "from vqbench.methods.vq import VectorQuantizer\n"
        "register_method('test-file-plugin-vq', family='vq', beta=0.5)(VectorQuantizer)\n")
    try:
        source = load_plugin(str(plugin))
        assert source.startswith(f"file:{plugin.resolve()}#sha256=")
        assert METHODS.get("test-file-plugin-vq").source == source
        assert load_plugin(str(plugin)) == source  # no double registration
    finally:
        METHODS.remove("test-file-plugin-vq")


def test_broken_plugin_is_reported_by_name(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(UserError, match=r"broken\.py failed to import: RuntimeError: boom"):
        load_plugin(str(plugin))
    with pytest.raises(UserError, match="does not exist"):
        load_plugin(str(tmp_path / "missing.py"))
    with pytest.raises(UserError, match="failed to import"):
        load_plugin("no_such_module_xyz")


def test_broken_entry_point_warns_once_and_others_load(monkeypatch):
    import importlib.metadata as md

    good = md.EntryPoint(name="good", value="json", group="g")
    bad = md.EntryPoint(name="bad", value="no_such_module_abc", group="g")
    monkeypatch.setattr(md, "entry_points", lambda group: [good, bad])
    reg = Registry("method", "g")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.load_entry_points()
        reg.load_entry_points()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "no_such_module_abc" in messages[0]
    assert list(reg.plugin_errors) == ["vqbench:no_such_module_abc"]


# An entry-point plugin that imports vqbench internals while it loads (as the scaffold template did), and whose
# entry point sorts before vqbench's own. Run in a fresh interpreter: the built-ins must not be imported yet.
_PLUGIN_MODULE = """
from vqbench.methods.vq import VectorQuantizer
from vqbench.registry import register_method
from vqbench.tasks.base import Task  # imports every built-in task inside the plugin's import as well

register_method("fake-plugin-vq", family="vq", description="a plugin preset", beta=0.5)(VectorQuantizer)
"""

_LOAD_WITH_FAKE_ENTRY_POINTS = """
import importlib.metadata as md
import json


class FakeDist:
    metadata = {"Name": "fake-plugin"}
    version = "1.0"


real = md.entry_points
plugin = md.EntryPoint(name="aaa-fake", value="fake_plugin_module", group="vqbench.methods")._for(FakeDist())
md.entry_points = lambda group: sorted([*real(group=group), plugin], key=lambda e: e.name) \\
    if group == "vqbench.methods" else real(group=group)

from vqbench.registry import METHODS, TASKS

print(json.dumps({"vq": METHODS.get("vq").source, "fsq": METHODS.get("fsq").source,
                  "gmm": TASKS.get("gmm").source, "fake-plugin-vq": METHODS.get("fake-plugin-vq").source}))
"""


def test_builtins_keep_their_source_when_a_plugin_imports_them_first(tmp_path):
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "fake_plugin_module.py").write_text(_PLUGIN_MODULE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _LOAD_WITH_FAKE_ENTRY_POINTS], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    sources = json.loads(done.stdout.strip().splitlines()[-1])
    assert sources == {"vq": "vqbench", "fsq": "vqbench", "gmm": "vqbench", "fake-plugin-vq": "fake-plugin==1.0"}


def test_source_of_a_registration_follows_the_registering_module(monkeypatch):
    from vqbench import registry

    monkeypatch.setattr(registry, "_module_sources", {"acme": "acme==2.0", "acme.sub": "acme-sub==1.0"})
    with registry._registering_from("file:/x.py#sha256=0"):
        assert registry.source_of("vqbench.methods.vq") == "vqbench"
        assert registry.source_of("acme.methods") == "acme==2.0"
        assert registry.source_of("acme.sub.deep") == "acme-sub==1.0"  # the longest owning module wins
        assert registry.source_of("vqbench_plugin_0123456789") == "file:/x.py#sha256=0"
    assert registry.source_of("some_module") == "vqbench"
