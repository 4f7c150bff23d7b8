"""numdl bench: the table, JSON output and the regression comparison (on a tiny plan)."""

import importlib.util
import json

import pytest

from click.testing import CliRunner

from numdl import bench
from numdl.cli import cli


def test_bench_runs_saves_and_flags_regressions(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "cases", lambda suites, quick: [("mlp", "train", 32, 128), ("mlp", "predict", 64, 128)])
    out = tmp_path / "now.json"
    # No --threads here: in this process it would shrink numba's pool for every later test (its size
    # is fixed once started), and the thread-split tests would skip. test_cli covers --threads in a
    # subprocess.
    result = CliRunner().invoke(cli, ["bench", "--suite", "mlp", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "mlp train b32" in result.output and "ratio" in result.output
    report = json.loads(out.read_text())
    assert {r["case"] for r in report["results"]} == {"mlp train b32", "mlp predict b64"}
    if importlib.util.find_spec("onnxruntime"):  # inference also against onnxruntime on the exported model
        predict = next(r for r in report["results"] if r["case"] == "mlp predict b64")
        assert predict["onnxruntime"] > 0 and predict["ratio_onnxruntime"] == pytest.approx(
            predict["numdl"] / predict["onnxruntime"])
        assert "onnxrt" in result.output and "vs ort" in result.output
    if importlib.util.find_spec("jax"):  # and training and inference against the jitted JAX twin
        for r in report["results"]:
            assert r["jax"] > 0 and r["ratio_jax"] == pytest.approx(r["numdl"] / r["jax"])
        assert "vs jax" in result.output
    faster = json.loads(out.read_text())
    for r in faster["results"]:
        r["numdl"] *= 1e6  # a baseline a million times faster: a regression however busy the machine is
    (tmp_path / "base.json").write_text(json.dumps(faster))
    result = CliRunner().invoke(cli, ["bench", "--suite", "mlp", "--quick", "--compare", str(tmp_path / "base.json")])
    assert result.exit_code == 1 and "regression: mlp train b32" in result.output


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_each_side_follows_every_other_equally_often(count):
    rounds = bench._orders(count, 2 * count)
    assert all(sorted(order) == list(range(count)) for order in rounds)
    follows = {}
    for order in rounds:
        for before, after in zip(order, order[1:]):
            follows[before, after] = follows.get((before, after), 0) + 1
    assert len(follows) == count * (count - 1) and len(set(follows.values())) <= 1


def test_alternate_runs_every_side_in_the_rounds_order(monkeypatch):
    monkeypatch.setattr(bench, "SETTLE_SECONDS", 0.0)
    calls = []
    runs = [lambda name=name: calls.append(name) for name in "abcd"]
    medians = bench._alternate(runs[0], runs[1], 4, None, runs[2], runs[3])
    assert medians[2] is None and all(m is not None for m in medians[:2] + medians[3:])
    timed = calls[4:]  # after one warm-up call each
    assert sorted(timed) == sorted("abcd" * 4)
    assert {timed[i - 1] for i in range(1, len(timed)) if timed[i] == "a" and i % 4} == {"b", "c", "d"}


def test_compare_tolerates_small_noise():
    now = {"results": [{"case": "a", "numdl": 95.0}]}
    assert bench.compare(now, {"results": [{"case": "a", "numdl": 100.0}]}, 0.2) == []
    assert bench.compare(now, {"results": [{"case": "a", "numdl": 200.0}]}, 0.2) == [("a", 95.0, 200.0)]


def test_compare_ignores_time_and_memory_cases():
    """Lower is better for seconds and MiB: those cases never count as throughput regressions."""
    now = {"results": [{"case": "first step", "unit": "s", "numdl": 5.0}, {"case": "rss", "unit": "MiB", "numdl": 900}]}
    before = {"results": [{"case": "first step", "unit": "s", "numdl": 1.0}, {"case": "rss", "unit": "MiB", "numdl": 100}]}
    assert bench.compare(now, before, 0.2) == []


def test_child_peak_memory_is_the_child_own():
    """The start-up suite reads a child's VmHWM (getrusage would report the parent's peak after exec)."""
    import numpy as np

    ballast = np.ones(300 * 2**20 // 8)  # 300 MiB in this process
    _, small = bench._run_python("x = 1\n" + bench._PEAK_RSS)
    _, large = bench._run_python("import numpy as np\nx = np.ones(400 * 2**20 // 8)\n" + bench._PEAK_RSS)
    assert small < 200 < 400 < large < 600, (small, large)
    del ballast


def test_kernel_suite_runs_every_family_against_torch(monkeypatch):
    """The kernel-family suite on its small sizes only (quick): one row per family and mode, each
    with both frameworks' figures."""
    full = bench._kernel_cases

    def small_size_of_each_family(torch):
        chosen = {}
        for case in full(torch):  # (family, size, layers, shape, batch, torch factory), small size first
            chosen.setdefault(case[0], case)
        return list(chosen.values())

    monkeypatch.setattr(bench, "_kernel_cases", small_size_of_each_family)
    results = bench.kernel_cases(repeats=1, threads=1, quick=True)
    families = {r["case"].split()[0] for r in results}
    assert {"linear", "relu", "tanh", "conv2d", "conv2d_relu_maxpool", "maxpool2d", "batchnorm2d", "layernorm", "lstm",
            "attention", "adam", "softmax+cross-entropy"} <= families
    assert all(r["numdl"] > 0 and r["torch"] > 0 and r["ratio"] > 0 for r in results)


def test_ceiling_products_are_the_models_multiply_adds():
    """The GEMM-bound suite times exactly the products a training step of the model computes: the
    MLP's from its Linear layers (no input gradient for the first), the LSTM's from its weights."""
    model = bench._numdl_model("mlp")
    shapes = [p.value.shape for name, p in model.named_parameters().items() if name.endswith("weight")]
    batch = 64
    forward = sum(batch * n_in * n_out for n_out, n_in in shapes)
    input_grads = sum(batch * n_in * n_out for n_out, n_in in shapes[1:])

    def macs(products):
        return sum(m * k * n * count for m, k, n, count, _, _ in products)

    assert macs(bench._step_products("mlp", "predict", batch)) == forward
    assert macs(bench._step_products("mlp", "train", batch)) == 2 * forward + input_grads

    lstm = bench._numdl_model("lstm")
    (hidden4, inputs), (_, hidden), (classes, _) = [p.value.shape for name, p in lstm.named_parameters().items()
                                                   if "weight" in name]  # weight_ih, weight_hh, the head's
    steps = 28
    per_step = batch * hidden * hidden4
    expected = (batch * steps * inputs * hidden4 + steps * per_step + batch * hidden * classes  # forward
                + 2 * batch * hidden * classes + steps * per_step  # head dW and dx; dh per step
                + batch * steps * hidden * hidden4 + batch * steps * inputs * hidden4)  # dW_hh, dW_ih
    assert macs(bench._step_products("lstm", "train", batch)) == expected


def test_ceiling_suite_reports_a_bound_against_torch(monkeypatch):
    monkeypatch.setattr(bench, "CEILING_CASES", (("mlp", "train", 32, 64),))
    (result,) = bench.ceiling_cases(repeats=1, threads=1, quick=False)
    assert result["case"] == "mlp train b32 GEMM bound"
    assert result["numdl"] > 0 and result["torch"] > 0 and result["torch_gemm_bound"] > 0
    assert result["ratio"] == result["numdl"] / result["torch"]


def test_tabular_suite_reads_both_formats_and_races_torch(monkeypatch):
    import pytest

    pytest.importorskip("pyarrow")
    real = bench.make_table
    monkeypatch.setattr(bench, "make_table", lambda rows, seed=0: real(2000, seed))
    monkeypatch.setattr(bench, "cases", lambda suites, quick: [("tabular", "train", 64, 512)])
    report = bench.run(["tabular"], quick=True, repeats=1)
    cases = {r["case"]: r for r in report["results"]}
    assert cases["tabular train b64"]["numdl"] > 0 and "ratio" in cases["tabular train b64"]
    table = real(1000)
    assert table.num_columns == 26 and 0.005 < table.column("n0").null_count / 1000 < 0.05
    for kind in ("CSV", "Parquet"):
        assert cases[f"read + preprocess 200,000 rows ({kind})"]["unit"] == "s"


def test_the_scaling_model_is_the_ring_allreduce_cost():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("scaling", Path(__file__).parent.parent / "benchmarks" / "scaling.py")
    scaling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scaling)
    # 1 MB among 8 nodes at 10 Gbit/s: 2 * 7/8 * 1e6 B / 1.25e9 B/s, plus 14 messages of 5 us
    assert scaling.ring_allreduce_seconds(1_000_000, 8, 10) == pytest.approx(1.4e-3 + 14 * 5e-6)
    assert scaling.ring_allreduce_seconds(1_000_000, 1, 10) == 0.0


def test_the_unet_suite_runs_examples_unet_toml_against_the_same_net_in_torch():
    """The bench's U-Net is examples/unet.toml's (same nodes' shapes and parameter count), and
    PyTorch's copy starts from the same weights: their first losses agree."""
    from pathlib import Path

    import numpy as np
    import pytest

    from numdl import config

    torch = pytest.importorskip("torch")
    ours = bench._numdl_model("unet")
    from_config = config.build_model(config.resolve(Path(__file__).parent.parent / "examples" / "unet.toml"), (1, 64, 64))
    assert ours.parameter_count() == from_config.parameter_count()
    assert sorted(ours.node_shapes.values()) == sorted(from_config.node_shapes.values())
    x, y = bench._data(4, (1, 64, 64), 11, label_shape=(64, 64))
    net = bench._torch_model(torch, "unet")
    bench._copy_weights_to_torch(torch, ours, net.ordered_modules())
    theirs = torch.nn.CrossEntropyLoss()(net(torch.from_numpy(x)), torch.from_numpy(y)).item()
    assert ours.loss.forward(ours.forward(x, training=True), y) == pytest.approx(theirs, rel=1e-4)
    result = bench.model_case("unet", "train", 2, 4, repeats=1, threads=1)
    assert result["case"] == "unet train b2" and result["numdl"] > 0 and result["torch"] > 0


@pytest.mark.parametrize("kind", ["mlp", "cnn", "lstm", "tabular", "transformer"])
def test_the_jax_twins_compute_numdls_models(kind):
    """The JAX peer's models are numdl's: the same logits from the same initial weights, and one
    jitted Adam step lowers the loss as numdl's does."""
    import numpy as np

    from numdl import bench_jax

    loaded = bench_jax.load()
    if loaded is None:
        pytest.skip("jax and optax are not installed")
    jax, jnp, _ = loaded
    model = bench._numdl_model(kind)
    shape = bench.INPUT_SHAPES.get(kind, (28, 28))
    x, y = bench._data(16, shape, bench.CLASSES.get(kind, 10))
    params = [jnp.asarray(np.array(p.value)) for p in model.parameters()]
    logits = np.asarray(bench_jax._forward(jax, jnp, kind)(params, jnp.asarray(x)))
    np.testing.assert_allclose(logits, model.predict(x), rtol=1e-4, atol=1e-5)
    run = bench_jax.epoch(kind, "train", [(x, y)], model)
    run()  # compiles and steps without error


def test_the_contention_suite_races_auto_against_one_thread_under_load_and_stops_its_load(monkeypatch):
    import subprocess

    monkeypatch.setattr(bench, "CONTENTION_SAMPLES", {False: 256, True: 256})
    started = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)
    import numba

    # threads: every core, which the suite restores at its end (fewer would stay set for later tests)
    (result,) = bench.contention_cases(repeats=1, threads=numba.config.NUMBA_NUM_THREADS, quick=True,
                                       busy_counts=(1,))
    assert result["case"] == "mlp train b64, 1 busy"
    assert result["numdl"] > 0 and result["threads_1"] > 0
    assert result["ratio_threads_1"] == pytest.approx(result["numdl"] / result["threads_1"])
    busy = [p for p in started if "-c" in p.args]  # (other libraries start helpers too: ldconfig)
    assert len(busy) == 1 and busy[0].poll() is not None  # the busy process was stopped
    assert "threads 1" in bench.format_table({"threads": 2, "repeats": 1, "results": [result], "peak_rss_mib": 1})
    from numdl.backend import get_ops

    assert get_ops("cpu").thread_chooser is None  # the other suites' fixed count is back


def test_the_blas_kernel_is_reported_and_an_override_warned_about(monkeypatch):
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    kernel, warning = bench.blas_report()
    assert kernel and "openblas" in kernel.lower() and warning is None
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setattr(bench, "_cpu_flags", lambda: {"avx2", "avx512f"})
    _, warning = bench.blas_report()
    assert "OPENBLAS_CORETYPE=Haswell overrides OpenBLAS's older kernels than this AVX-512 CPU runs" in warning
    table = bench.format_table({"threads": 2, "repeats": 1, "results": [], "peak_rss_mib": 1, "blas": kernel,
                                "blas_warning": warning})
    assert f"BLAS: {kernel}" in table and "warning: OPENBLAS_CORETYPE=Haswell" in table


def test_the_latency_suite_times_one_predict_call_against_the_peers():
    results = bench.latency_cases(repeats=1, threads=1, quick=True)
    assert [r["case"] for r in results] == ["mlp predict latency b1", "mlp predict latency b8"]
    for r in results:
        assert r["unit"] == "us" and r["numdl"] > 0
        if "torch" in r:  # time per call: the ratio is theirs over ours
            assert r["ratio"] == pytest.approx(r["torch"] / r["numdl"])
        if "jax" in r:
            assert r["ratio_jax"] == pytest.approx(r["jax"] / r["numdl"])
    assert "latency b1" in bench.format_table({"threads": 1, "repeats": 1, "results": results, "peak_rss_mib": 1})
