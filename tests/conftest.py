import pytest

def pytest_configure(config):
    config.addinivalue_line('markers', 'docs: checks of the rendered documentation site (run last)')

def pytest_collection_modifyitems(config, items):
    "The docs site is built from the notebooks the notebook tests execute: run its checks last."
    items.sort(key=lambda it: it.get_closest_marker('docs') is not None)
