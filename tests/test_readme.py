"""The README stays true: its plugin example works and its commands match .ci/run."""

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_plugin_example_registers_and_passes_the_gradient_check(tmp_path):
    import importlib.util

    from numdl import plugins
    from numdl.testing import check_layer_gradients

    code = re.search(r"```python\n# my_numdl_plugin.py\n(.*?)```", README, re.S).group(1)
    path = tmp_path / "my_numdl_plugin.py"  # a real file, as in a package: numba's cache needs one
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("my_numdl_plugin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugins.register(module)
    try:
        layer = plugins.registry().get("layer", "square")()
        check_layer_gradients(layer, (5,))
        assert np.allclose(layer.forward(np.full((1, 5), 3.0)), 9.0)
    finally:
        plugins.unregister(module)


def test_ci_runs_the_readme_test_command():
    command = re.search(r"```sh\n(pip install -e '\.\[test\]' -e plugins/numdl-extras && python -m pytest -q)\n```",
                        README).group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-e '.[test]' -e plugins/numdl-extras" in ci and "pytest -q" in ci, command
