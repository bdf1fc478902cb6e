"""``vqbench diagnose``: verdicts on real (tiny, trained here) tokenizers, its three inputs, the report and advice."""

from __future__ import annotations

import argparse
import json
import math
import textwrap

import numpy as np
import pytest
import torch

from vqbench.commands import diagnose as D
from vqbench.errors import UserError

# A tiny tokenizer following the DiagnosableModel protocol, written to a module so `--model module:factory` finds it.
TOKENIZER_MODULE = textwrap.dedent('''
    from pathlib import Path

    import torch
    import vqbench
    from torch import nn

    HERE = Path(__file__).parent


    def data(n=4096, seed=0):
        """Rows of a 256-mode Gaussian mixture in 16 dimensions (spread enough that 64 codes can all be used)."""
        g = torch.Generator().manual_seed(seed)
        centers = torch.randn(256, 16, generator=g) * 1.5
        return centers[torch.randint(0, 256, (n,), generator=g)] + 0.5 * torch.randn(n, 16, generator=g)


    class Tiny(nn.Module):
        def __init__(self, hidden, **vq):
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 8))
            self.dec = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 16))
            self.q = vqbench.create_method("vq", dim=8, codebook_size=64, **vq)

        def forward(self, x):
            out = self.q(self.enc(x))
            return self.dec(out.z_q), out

        def quantizer_io(self, x):
            z = self.enc(x)
            return z, self.q(z).indices

        def codebook(self):
            return self.q.codebook()


    CONFIGS = {"restricted": dict(hidden=64, init="data", init_scale=0.01),
               "narrow": dict(hidden=1, kmeans_init=True, warmup_fraction=0.5),
               "healthy": dict(hidden=64, kmeans_init=True, warmup_fraction=0.5)}


    def train(name, steps=200):
        torch.manual_seed(0)
        model = Tiny(**CONFIGS[name])
        x = data()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for step in range(steps):
            model.q.on_step(step, steps)
            batch = x[torch.randint(0, len(x), (256,), generator=g)]
            x_hat, out = model(batch)
            loss = (x_hat - batch).pow(2).mean() + out.loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.save(model.state_dict(), HERE / f"{name}.pt")
        return model.eval()


    def load(name):
        model = Tiny(**CONFIGS[name])
        model.load_state_dict(torch.load(HERE / f"{name}.pt"))
        return model


    def restricted():
        return load("restricted")


    def narrow():
        return load("narrow")


    def healthy():
        return load("healthy")
''')


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    D.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """The module, its data file and the three trained models (saved next to it)."""
    import importlib
    import sys

    folder = tmp_path_factory.mktemp("tok")
    (folder / "tiny_tokenizer.py").write_text(TOKENIZER_MODULE)
    sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module("tiny_tokenizer")
        torch.save(module.data(), folder / "data.pt")
        for name in module.CONFIGS:
            module.train(name)
        yield folder, module
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("tiny_tokenizer", None)


@pytest.mark.parametrize("name, expected", [("restricted", {"tokens-collapse"}),
                                            ("narrow", {"embeddings-collapse"}),
                                            ("healthy", {"healthy"})])
def test_trained_models_get_the_expected_verdict(tokenizers, tmp_path, capsys, name, expected):
    folder, _ = tokenizers
    out = tmp_path / name
    assert D.main(parse("--model", f"tiny_tokenizer:{name}", "--data", str(folder / "data.pt"),
                        "--out", str(out), "--batch-size", "1000")) == 0
    result = json.loads((out / "diagnosis.json").read_text())
    kinds = {v["kind"] for v in result["verdicts"]}
    # a narrow encoder may also leave codes dead (few can be reached): embeddings collapse must be among the lines
    assert kinds == expected or (name == "narrow" and expected < kinds and "healthy" not in kinds), result["verdicts"]
    printed = capsys.readouterr().out
    assert result["verdicts"][0]["line"] in printed
    m = result["metrics"]
    if name == "restricted":
        assert m["dead_fraction"] >= 0.25 and m["merged_clusters"] >= 1
    if name == "narrow":
        assert m["embedding_rank"] < 0.35 * 8 and m["data_rank"] > 8  # the data (16-dim input rows) is not low-rank
    if name == "healthy":
        assert m["utilization"] > 0.9 and m["tokens_collapse_index"] > 0.9 and m["embedding_rank"] > 6
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 4 and "<script" not in html and "<link" not in html
    assert "https://" not in html and html.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http://") == 0


def test_files_input_equals_model_input(tokenizers, tmp_path):
    folder, module = tokenizers
    model = module.load("restricted").eval()
    x = torch.load(folder / "data.pt")
    with torch.no_grad():
        z, indices = model.quantizer_io(x)
    np.save(tmp_path / "codebook.npy", model.codebook().detach().numpy())
    torch.save({"latents": z, "other": torch.zeros(3)}, tmp_path / "z.pt")
    np.save(tmp_path / "indices.npy", indices.numpy())
    files = D.run_diagnosis(parse("--codebook", str(tmp_path / "codebook.npy"), "--latents", str(tmp_path / "z.pt"),
                                  "--latents-key", "latents", "--indices", str(tmp_path / "indices.npy")))
    nearest = D.run_diagnosis(parse("--codebook", str(tmp_path / "codebook.npy"), "--latents", str(tmp_path / "z.pt"),
                                    "--latents-key", "latents"))
    via_model = D.run_diagnosis(parse("--model", "tiny_tokenizer:restricted", "--data", str(folder / "data.pt")))
    for name in ("utilization", "perplexity", "tokens_collapse_index", "embedding_rank", "codebook_rank"):
        assert files.metrics[name] == pytest.approx(via_model.metrics[name], rel=1e-6), name
        assert nearest.metrics[name] == pytest.approx(files.metrics[name], rel=1e-6), name
    with pytest.raises(UserError, match="--latents-key"):  # two tensors in the file, no key
        D.run_diagnosis(parse("--codebook", str(tmp_path / "codebook.npy"), "--latents", str(tmp_path / "z.pt")))


@pytest.mark.parametrize("fmt", [".pt", ".safetensors"])
def test_vector_quantize_pytorch_checkpoint_is_read_correctly(tmp_path, fmt):
    from vector_quantize_pytorch import VectorQuantize

    torch.manual_seed(0)
    # a projection (dim 12 -> 2 heads x 4) and a separate codebook per head: the hardest layout to read
    vq = VectorQuantize(dim=12, codebook_size=32, codebook_dim=4, heads=2, separate_codebook_per_head=True,
                        decay=0.8, kmeans_init=True)
    x = torch.randn(8, 100, 12) * torch.linspace(0.1, 2.0, 12)
    for _ in range(5):
        vq(x)  # EMA updates move the codes away from their init
    vq.eval()
    with torch.no_grad():
        _, indices, _ = vq(x)
    state = vq.state_dict()
    path = tmp_path / f"vq{fmt}"
    if fmt == ".pt":
        torch.save({"quantizer." + k: v for k, v in state.items()}, path)  # inside a bigger model: a key prefix
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items() if v.ndim}, str(path))
    np.save(tmp_path / "x.npy", x.numpy())
    for head in (0, 1):
        diag = D.run_diagnosis(parse("--codebook", str(path), "--latents", str(tmp_path / "x.npy"),
                                     "--head", str(head)))
        counts = torch.bincount(indices[..., head].reshape(-1), minlength=32).double()
        assert diag.arrays["usage_histogram"] == counts.sort(descending=True).values.tolist()
        from vqbench.metrics import effective_rank

        assert diag.metrics["codebook_rank"] == pytest.approx(effective_rank(vq.codebook[head]), rel=1e-6)
        assert diag.dim == 4 and diag.codebook_size == 32


def _diag_args(tmp_path, case, codebook, latents=None, indices=None, **kw) -> argparse.Namespace:
    argv = []
    (tmp_path / case).mkdir()
    for name, value in (("codebook", codebook), ("latents", latents), ("indices", indices)):
        if value is not None:
            path = tmp_path / case / f"{name}.pt"
            torch.save(value, path)
            argv += [f"--{name}", str(path)]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return parse(*argv)


def test_bad_input_is_a_one_line_user_error(tmp_path):
    cb, z = torch.randn(16, 4), torch.randn(100, 4)
    cases = {
        "shape": _diag_args(tmp_path, "shape", torch.randn(2, 16, 4), z),
        "range": _diag_args(tmp_path, "range", cb, z, torch.full((100,), 16)),
        "negative": _diag_args(tmp_path, "negative", cb, z, torch.full((100,), -1)),
        "dimension": _diag_args(tmp_path, "dimension", cb, torch.randn(100, 5)),
        "nan": _diag_args(tmp_path, "nan", cb, torch.cat([z, torch.full((1, 4), math.nan)])),
        "count": _diag_args(tmp_path, "count", cb, z, torch.zeros(99, dtype=torch.long)),
    }
    (tmp_path / "empty.pt").write_bytes(b"")
    latents = str(tmp_path / "shape" / "latents.pt")
    cases["empty"] = parse("--codebook", str(tmp_path / "empty.pt"), "--latents", latents)
    (tmp_path / "damaged.npy").write_bytes(b"\x93NUMPY garbage")
    cases["damaged"] = parse("--codebook", str(tmp_path / "damaged.npy"))
    (tmp_path / "damaged.safetensors").write_bytes(b"\x00\x01\x02 not a header")
    cases["damaged-st"] = parse("--codebook", str(tmp_path / "damaged.safetensors"))
    cases["import"] = parse("--model", "no_such_module_here:build", "--data", latents)
    cases["attr"] = parse("--model", "math:no_factory", "--data", latents)
    expected = {"shape": "(K, d)", "range": "K=16", "negative": "K=16", "dimension": "disagree", "nan": "NaN",
                "count": "99 indices", "empty": "empty", "damaged": "cannot read", "damaged-st": "cannot read",
                "import": "does not import", "attr": "no attribute"}
    for name, args in cases.items():
        with pytest.raises(UserError) as info:
            D.run_diagnosis(args)
            pytest.fail(f"case {name}: no error")
        message = str(info.value)
        assert expected[name] in message and "\n" not in message, (name, message)


def test_the_cli_prints_one_error_line(tmp_path, capsys):
    (tmp_path / "empty.npy").write_bytes(b"")
    assert D.cli(["--codebook", str(tmp_path / "empty.npy"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "empty" in err and len(err.splitlines()) == 1


def test_advice_comes_from_the_store_and_its_findings(tokenizers, tmp_path, monkeypatch):
    """A tiny tokens-collapse reproduction through the runner, drawn as a finding, read back as advice."""
    from vqbench.commands.findings import draw_finding
    from vqbench.runner import run
    from vqbench.spec import make_spec

    folder, _ = tokenizers
    task = {"data_dim": 8, "codebook_size": 64, "n_modes": 64, "n_train": 2048, "n_eval": 1024}
    budget = {"steps": 150, "batch_size": 256, "eval_interval": 150}
    for method, scale in (("vq", 0.01), ("vq", 1.0), ("vq-kmeans", 0.01), ("vq-kmeans", 1.0)):
        spec = make_spec("gmm-codebook", method, task, {"init": "data", "init_scale": scale, "init_offset": 0.0},
                         budget=budget, tags=("suite:tokens-collapse",))
        assert run(spec, tmp_path / "board", progress=False).status == "ok"
    draw_finding(tmp_path / "board", "tokens-collapse")
    out = tmp_path / "report"
    assert D.main(parse("--model", "tiny_tokenizer:restricted", "--data", str(folder / "data.pt"),
                        "--board", str(tmp_path / "board"), "--out", str(out))) == 0
    result = json.loads((out / "diagnosis.json").read_text())
    advice = result["advice"]
    assert {(r["method"], r["method_params"]["init_scale"]) for r in advice["comparison"]} == {
        ("vq", 0.01), ("vq", 1.0), ("vq-kmeans", 0.01), ("vq-kmeans", 1.0)}
    names = {r["remedy"] for r in advice["remedies"]}
    assert "vq-kmeans" in names, advice  # immune to the restricted init in this store's own runs
    assert all(r["kind"] == "tokens-collapse" and r["figure"].endswith("tokens-collapse/figure.png")
               for r in advice["remedies"])
    html = (out / "report.html").read_text()
    assert "../board/findings/tokens-collapse/figure.png" in html and "(yours)" in html
    # without a store the report says how to get one
    monkeypatch.chdir(tmp_path)  # no published/results here
    bare = D.main(parse("--model", "tiny_tokenizer:healthy", "--data", str(folder / "data.pt"),
                        "--out", str(tmp_path / "bare")))
    assert bare == 0
    notes = json.loads((tmp_path / "bare" / "diagnosis.json").read_text())["advice"]["notes"]
    assert any("--board" in n for n in notes)
