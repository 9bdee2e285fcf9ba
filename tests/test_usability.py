"""What a new user meets first: single images everywhere, readable results, the console script.

Every public function that takes token matrices treats one image [N, D] as a batch of one; result
reprs fit on a line; ``eadaprune --version`` and the help texts; the demo's saturation notes and
picture; the benchmarks stop before any work when an optional dependency is missing, and the command
their results files record runs.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eadaprune_kernels
from eadaprune_kernels import (
    adaptive_prune,
    calibrate_energy,
    exact_budget,
    exact_svdvals,
    randomized_svdvals,
    spectral_budget,
)
from eadaprune_kernels.cli import main as cli_main

from helpers import matrix_with_spectrum, spectrum

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------ single images

# Public names whose first argument is a token matrix, and how to call each on tokens.
IMAGE_FUNCTIONS = {
    "adaptive_prune": lambda x: adaptive_prune(x, sketch_size=16),
    "spectral_budget": lambda x: spectral_budget(x, sketch_size=16),
    "randomized_svdvals": lambda x: randomized_svdvals(x, sketch_size=16),
    "exact_budget": lambda x: exact_budget(x, energy=0.9),
    "exact_svdvals": lambda x: exact_svdvals(x),
    "calibrate_energy": lambda x: calibrate_energy(x, target_mean_tokens=5, sketch_size=16),
}
# Public names that take no token matrix (sizes, budgets, a device) or are not functions.
NO_TOKEN_INPUT = {"gaussian_sketch", "allocate_budgets", "available_backends", "PruneResult", "BudgetResult",
                  "PackedTokens", "__version__"}


def _image(n=40, d=24, seed=0, dtype=torch.float32):
    """One image [n, d] with a chosen exponential spectrum s (returned too)."""
    g = torch.Generator().manual_seed(seed)
    s = spectrum("exponential", min(n - 1, d), g)
    return matrix_with_spectrum(s, n, d, g).to(dtype), s


def test_every_public_name_is_checked_with_a_single_image_or_takes_no_tokens():
    assert set(eadaprune_kernels.__all__) == set(IMAGE_FUNCTIONS) | NO_TOKEN_INPUT


def _tensor_fields(value):
    if isinstance(value, torch.Tensor):
        return {"value": value}
    return {k: v for k, v in vars(value).items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("name", sorted(IMAGE_FUNCTIONS))
def test_a_single_image_is_a_batch_of_one(name):
    x, _ = _image()
    call = IMAGE_FUNCTIONS[name]
    single, batched = call(x), call(x[None])
    if name == "calibrate_energy":  # a float: the same energy and mean for one image either way
        assert float(single) == float(batched) and single.mean_tokens == batched.mean_tokens
        return
    single_fields, batched_fields = _tensor_fields(single), _tensor_fields(batched)
    assert single_fields.keys() == batched_fields.keys() and single_fields
    for field, value in single_fields.items():
        assert value.shape == batched_fields[field].shape[1:], field
        assert torch.equal(value, batched_fields[field][0]), field


def test_exact_budget_of_a_single_image_is_one_number_from_its_spectrum():
    x, s = _image(n=60, d=48, seed=3, dtype=torch.float64)
    cumulative = torch.cumsum(s.square(), 0)
    for energy in (0.5, 0.9, 0.99):
        expected = int((cumulative >= (energy - 1e-6) * cumulative[-1]).nonzero()[0]) + 1
        budget = exact_budget(x, energy=energy)
        assert budget.shape == () and budget.dtype == torch.int64
        assert int(budget) == expected
    assert exact_svdvals(x).shape == (48,)
    torch.testing.assert_close(exact_svdvals(x)[: s.numel()], s, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("tokens, kwargs, exc, pattern", [
    ([[1.0, 2.0]], {}, TypeError, r"tokens: expected a torch.Tensor"),
    (torch.ones(4, 3, dtype=torch.int32), {}, TypeError, r"tokens: expected dtype float16"),
    (torch.ones(5), {}, ValueError, r"tokens: expected rank 3 \[B, N, D\] or rank 2 \[N, D\]"),
    (torch.ones(0, 3), {}, ValueError, r"tokens: expected N >= 1"),
    (torch.randn(6, 4), dict(energy=1.5), ValueError, r"energy: expected a float in \(0, 1\], got 1.5"),
    (torch.randn(6, 4), dict(max_tokens=7), ValueError, r"max_tokens: expected at most N = 6"),
    (torch.randn(6, 4), dict(min_tokens=5), ValueError, r"min_tokens: expected at most max_tokens = 4"),
    (torch.randn(6, 4), dict(center=1), TypeError, r"center: expected a bool"),
])
def test_exact_budget_rejects_bad_arguments(tokens, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        exact_budget(tokens, **kwargs)


def test_exact_functions_name_what_is_wrong():
    bad = torch.randn(3, 6, 4)
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"tokens: expected finite values, got NaN or Inf in images \[1\]"):
        exact_budget(bad)
    with pytest.raises(ValueError, match=r"in the image"):
        exact_budget(bad[1])
    bad[2, 0, 3] = float("inf")
    with pytest.raises(ValueError, match=r"got NaN or Inf in images \[1, 2\]"):
        exact_svdvals(bad)
    with pytest.raises(ValueError, match=r"in the image"):
        exact_svdvals(bad[2])
    with pytest.raises(ValueError, match=r"tokens: expected rank 3"):
        exact_svdvals(torch.ones(2, 2, 2, 2))
    with pytest.raises(TypeError, match=r"center: expected a bool"):
        exact_svdvals(torch.ones(3, 2), center="yes")


# ---------------------------------------------------------------------------------------- reprs

def _mixed_batch(b=20, n=48, d=32):
    """Images 0, 3, 6, ... are noise (they saturate a sketch of 8); the others have rank 2."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(b, n, 2, generator=g) @ torch.randn(b, 2, d, generator=g)
    noisy = torch.arange(b) % 3 == 0
    x[noisy] = torch.randn(int(noisy.sum()), n, d, generator=g)
    return x, noisy


def test_prune_result_repr_is_one_short_line_with_budgets_and_saturation():
    x, noisy = _mixed_batch()
    result = adaptive_prune(x, sketch_size=8)
    assert torch.equal(result.saturated, noisy)  # the premise: noise saturates, rank 2 does not
    text = repr(result)
    assert "\n" not in text and len(text) < 300, text
    assert "tensor(" not in text
    first = ", ".join(str(v) for v in result.lengths[:8].tolist())
    assert f"lengths=[{first}, ...]" in text
    assert f"saturated {int(noisy.sum())} of 20 (images 0, 3, 6, 9, 12, 15, 18)" in text
    assert f"backend={result.backend!r}" in text
    assert "tokens [20, 8, 32] float32" in text and "singular_values [20, 8] float32" in text
    assert str(result) == text


def test_result_reprs_of_every_layout():
    x, _ = _mixed_batch(b=4)
    budgets = spectral_budget(x, sketch_size=8)
    assert repr(budgets).startswith(f"BudgetResult(backend={budgets.backend!r}, budgets=[")
    assert "saturated 2 of 4 (images 0, 3)" in repr(budgets)
    single = adaptive_prune(x[1], sketch_size=8)
    assert f"lengths={int(single.lengths)}, saturated=False" in repr(single)
    everything = adaptive_prune(torch.randn(3, 48, 32), sketch_size=8)
    assert "saturated 3 of 3," in repr(everything)  # all saturated: no list of images
    ragged = adaptive_prune([x[0], x[1, :30]], sketch_size=8)
    assert "saturated 1 of 2 (images 0)" in repr(ragged)
    packed = ragged.packed_with_indices()
    k = int(ragged.lengths.sum())
    assert repr(packed) == f"PackedTokens(tokens [{k}, 32] float32, cu_seqlens [3] int32, indices [{k}] int64)"
    empty = adaptive_prune(x[:0], sketch_size=8)
    assert "lengths=[], saturated 0 of 0" in repr(empty)
    huge = adaptive_prune(torch.randn(300, 16, 8), sketch_size=4)
    assert len(repr(huge)) < 300


# ------------------------------------------------------------------------------ console script

def test_version_names_the_installed_package(capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert eadaprune_kernels.__version__ == importlib.metadata.version("eadaprune_kernels")
    assert out.startswith(f"eadaprune_kernels {eadaprune_kernels.__version__} (torch {torch.__version__}, ")


def _help(capfd, argv) -> str:
    """The help text of the console script (the benchmarks print theirs from a child process)."""
    try:
        code = cli_main(argv)
    except SystemExit as stop:
        code = stop.code
    assert code == 0
    return capfd.readouterr().out


def _readme_minutes(command: str) -> int:
    """The minutes the README gives for ``command`` on a 2-core CPU."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(re.escape(command) + r" +# .*?~(\d+) min on a 2-core CPU", readme)
    assert found, f"README: no line `{command}  # ... ~N min on a 2-core CPU`"
    return int(found.group(1))


@pytest.mark.parametrize("argv, prog, readme_command", [
    (["bench", "--", "--help"], "eadaprune bench --", "eadaprune bench"),
    (["bench", "--accuracy", "--", "--help"], "eadaprune bench --accuracy --", "eadaprune bench --accuracy"),
])
def test_benchmark_help_names_the_command_and_agrees_with_the_readme(capfd, argv, prog, readme_command):
    text = _help(capfd, argv)
    assert text.startswith(f"usage: {prog} [-h]")
    assert not re.search(r"\bissue\b", text, re.IGNORECASE)
    minutes = re.search(r"2-core CPU: ~(\d+) min", text)
    assert minutes, text
    assert int(minutes.group(1)) == _readme_minutes(readme_command)


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["bench", "--help"]])
def test_console_help_speaks_of_the_product_only(capfd, argv):
    text = _help(capfd, argv)
    assert text.startswith("usage: eadaprune")
    assert not re.search(r"\bissue\b", text, re.IGNORECASE)


@pytest.mark.parametrize("argv, message", [
    (["--energy", "1.5"], "energy: expected a float in (0, 1], got 1.5"),
    (["--energy", "nan"], "energy: expected a float in (0, 1], got nan"),
    (["--sketch-size", "0"], "sketch_size: expected an int >= 1, got 0"),
    (["--power-iters", "-1"], "power_iters: expected an int >= 0, got -1"),
    (["--backend", "no-such"], "backend: expected 'auto' or a backend that runs on this CPU"),
])
def test_demo_rejects_bad_options_before_loading_anything(capsys, argv, message):
    assert cli_main(["demo", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing was loaded or printed
    assert captured.err.startswith("eadaprune demo: ") and message in captured.err


# ------------------------------------------------------------------------------------------ demo

def test_demo_explains_saturation_and_a_larger_sketch_measures_it():
    pytest.importorskip("skimage")
    from eadaprune_kernels.demo import run_demo
    from eadaprune_kernels.images import patch_tokens, sample_images

    lines = []
    result = run_demo(names=("horse", "grass"), print_fn=lines.append)
    text = "\n".join(lines)
    assert result.saturated.tolist() == [False, True]  # grass needs more than 128 singular values
    assert "l = min(sketch_size, N, D) = 128" in text
    assert re.search(r"\| grass \| 128 \| .* \| yes: needs more than l = 128 \|", text)
    assert re.search(r"\| horse \| \d+ \| .* \| no \|", text)
    assert "Saturated (grass)" in text and "--sketch-size (e.g. 256)" in text

    lines.clear()
    wider = run_demo(names=("horse", "grass"), sketch_size=256, print_fn=lines.append)
    grass = patch_tokens(sample_images(("grass",))["grass"])
    assert not bool(wider.saturated[1])
    assert int(wider.lengths[1]) == int(exact_budget(grass, energy=0.99)) > 128
    assert "No image saturated" in "\n".join(lines)


def test_demo_picture_shows_kept_patches_bright_and_dropped_ones_dim(tmp_path):
    pytest.importorskip("skimage")
    Image = pytest.importorskip("PIL.Image")
    numpy = pytest.importorskip("numpy")
    from eadaprune_kernels.demo import DIM, GRID, PATCH, picture_layout, run_demo
    from eadaprune_kernels.images import patch_tokens, sample_images

    path = tmp_path / "demo.png"
    result = run_demo(names=("camera",), png=str(path), print_fn=lambda line: None)
    layout = picture_layout(1)
    picture = torch.from_numpy(numpy.array(Image.open(path).convert("RGB"))).float()
    assert tuple(picture.shape[:2]) == (layout["size"][1], layout["size"][0])
    assert (picture[: layout["header"] - 4] < 128).any()  # the legend is written above the images
    tokens = patch_tokens(sample_images(("camera",))["camera"])  # [576, 588]
    kept = set(result.indices[0, : int(result.lengths[0])].tolist())
    x0, y0 = layout["origins"][0]
    for token in (min(kept), next(t for t in range(GRID * GRID) if t not in kept)):
        row, col = divmod(token, GRID)
        patch = picture[y0 + row * PATCH: y0 + (row + 1) * PATCH, x0 + col * PATCH: x0 + (col + 1) * PATCH]
        original = tokens[token].reshape(PATCH, PATCH, 3) * 255
        expected = original if token in kept else original * DIM
        assert (patch - expected).abs().max() <= 1.0, token


# ------------------------------------------------------------------------------------ benchmarks

TINY_SPEED = ["--n", "24", "--dims", "16", "--batches", "2", "--sketch-sizes", "8", "--repeats", "1",
              "--methods", "torch.linalg.svdvals", "eadaprune[reference].spectral_budget"]


def _blocking_packages(tmp_path: Path, names) -> dict:
    """An environment whose PYTHONPATH shadows ``names`` with packages that fail to import."""
    for name in names:
        (tmp_path / "blocked" / name).mkdir(parents=True)
        (tmp_path / "blocked" / name / "__init__.py").write_text(
            f"raise ImportError('{name} is blocked by the test')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "blocked"), env.get("PYTHONPATH", "")])
    return env


def test_bench_without_its_extra_stops_before_timing_anything(tmp_path):
    env = _blocking_packages(tmp_path, ["matplotlib", "sklearn"])
    out_dir = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "eadaprune_kernels", "bench", "--", "--out-dir", str(out_dir)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "missing matplotlib (the plot), scikit-learn (the sklearn.randomized_svd baseline)" in run.stderr
    assert 'pip install --no-build-isolation -e ".[bench]"' in run.stderr and "--no-plot" in run.stderr
    assert "ms (n=" not in run.stderr and not out_dir.exists()  # nothing was timed or written


def test_bench_without_matplotlib_writes_the_table_with_no_plot(tmp_path, monkeypatch, capfd):
    # `eadaprune bench` runs the benchmark in a child process, which inherits the blocking PYTHONPATH
    monkeypatch.setenv("PYTHONPATH", _blocking_packages(tmp_path, ["matplotlib"])["PYTHONPATH"])
    out_dir = tmp_path / "results"
    assert cli_main(["bench", "--", *TINY_SPEED, "--out-dir", str(out_dir), "--tag", "t"]) == 2
    assert "--no-plot" in capfd.readouterr().err
    assert cli_main(["bench", "--", *TINY_SPEED, "--no-plot", "--out-dir", str(out_dir), "--tag", "t"]) == 0
    table = (out_dir / "t.md").read_text(encoding="utf-8")
    assert "| torch.linalg.svdvals |" in table and not (out_dir / "t.png").exists()


def test_accuracy_without_scikit_image_stops_before_computing(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("PYTHONPATH", _blocking_packages(tmp_path, ["skimage"])["PYTHONPATH"])
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    assert cli_main(["bench", "--accuracy", "--", "--count", "1", "--out-dir", str(out_dir)]) == 2
    err = capfd.readouterr().err
    assert "missing scikit-image" in err and '".[bench]"' in err and "--families" in err
    assert not any(out_dir.iterdir())


def test_bench_is_run_in_a_child_process_and_leaves_sys_path_alone(tmp_path):
    before = list(sys.path)
    assert cli_main(["bench", "--", *TINY_SPEED, "--no-plot", "--out-dir", str(tmp_path), "--tag", "t"]) == 0
    assert sys.path == before and "bench.run_speed" not in sys.modules


def test_bench_passes_on_its_script_arguments_with_or_without_a_separator(tmp_path, capfd):
    assert cli_main(["bench", *TINY_SPEED, "--no-plot", "--out-dir", str(tmp_path), "--tag", "t"]) == 0
    assert "| torch.linalg.svdvals |" in (tmp_path / "t.md").read_text(encoding="utf-8")
    assert cli_main(["bench", "--n", "24", "--methods", "svdvals", "no-such-method", "--no-plot",
                     "--out-dir", str(tmp_path), "--tag", "u"]) == 2
    assert "--methods: 'no-such-method' matches none of the methods on cpu" in capfd.readouterr().err
    assert cli_main(["bench", "--accuracy", "--families", "no such family", "--out-dir", str(tmp_path)]) == 2
    assert "argument --families: invalid choice: 'no such family'" in capfd.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.md"]


def _recorded_command(path: Path) -> list[str]:
    found = re.search(r"command \(from the repository root\): `([^`]*)`", path.read_text(encoding="utf-8"))
    assert found, path.read_text(encoding="utf-8")[:2000]
    return shlex.split(found.group(1))


@pytest.mark.parametrize("accuracy", [False, True], ids=["speed", "accuracy"])
def test_results_files_record_a_command_that_runs(tmp_path, accuracy):
    if accuracy:
        args = ["--families", "exp decay", "--count", "1", "--n", "24", "--d", "16", "--out-dir", str(tmp_path),
                "--tag", "run"]
    else:
        args = [*TINY_SPEED, "--no-plot", "--out-dir", str(tmp_path), "--tag", "run"]
    assert cli_main(["bench", *(["--accuracy"] if accuracy else []), "--", *args]) == 0
    command = _recorded_command(tmp_path / "run.md")
    module = "bench.run_accuracy" if accuracy else "bench.run_speed"
    assert command == ["python", "-m", module, *args]
    (tmp_path / "run.md").unlink()
    rerun = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert _recorded_command(tmp_path / "run.md") == command
