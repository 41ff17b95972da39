"""The docstring examples in the package run and print what they say."""

import doctest
import importlib
import pkgutil

import pytest

import py4dstem_transformer

MODULES = sorted(m.name for m in pkgutil.walk_packages(py4dstem_transformer.__path__, "py4dstem_transformer."))


def _examples(name):
    module = importlib.import_module(name)
    return [t for t in doctest.DocTestFinder().find(module, name) if t.examples]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in _examples(name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see output above)"


def test_the_documented_examples_are_found():
    """The runner above sees the package's examples (guards against a finder that finds nothing)."""
    found = {name: sum(len(t.examples) for t in _examples(name)) for name in MODULES}
    for name in ("model.model", "model.tokens", "core.symmetry", "simulation.simulate"):
        assert found[f"py4dstem_transformer.{name}"] > 0, name
