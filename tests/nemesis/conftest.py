"""Options of the nemesis suite. Each has an environment variable twin, which also works
when pytest is started from the repository root (where these options are not registered
because this conftest is not loaded at start-up):

  --nemesis-seed=N           NEMESIS_SEED=N            base seed of the CI campaign
  --nemesis-runs-dir=DIR     NEMESIS_RUNS_DIR=DIR      keep run directories there
"""
import os


def pytest_addoption(parser):
    g = parser.getgroup("nemesis", "PickleDB Cluster fault-injection campaign")
    g.addoption("--nemesis-seed", type=int, default=None,
                help="base seed of the nemesis CI campaign (default: random, printed)")
    g.addoption("--nemesis-runs-dir", default=None,
                help="directory for nemesis run artefacts (default: pytest tmp dirs)")


def nemesis_option(config, name, env, cast=str):
    value = config.getoption(name, default=None)
    if value is None and os.environ.get(env):
        value = cast(os.environ[env])
    return value
