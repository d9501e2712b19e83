"""Fixtures and the `slow` marker; shared helper functions live in helpers.py."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import TINY_DATA, TINY_VIT, run_train  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a model end to end (deselect with -m 'not slow')")


@pytest.fixture
def exits_2(capsys):
    """Call train.main(argv) and return its one-line error, asserting exit code 2."""
    def check(argv):
        import train
        with pytest.raises(SystemExit) as e:
            train.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith("train.py: error: ")
        return err
    return check


@pytest.fixture(scope="session")
def vit_run(tmp_path_factory):
    """One tiny ViT trained for 10 epochs on synthetic shapes, on the CPU: (run folder, (config, rows, final))."""
    out = tmp_path_factory.mktemp("runs") / "vit"
    return out, run_train(out, *TINY_VIT, *TINY_DATA, "--synthetic-per-class", "100", "--epochs", "10",
                          "--device", "cpu")
