"""vlmkit: a notebook-first research kit for vision-language models (Ovis2.5, InternVL3.5, Qwen2.5-VL).

`import vlmkit` loads nothing heavy: each submodule (`vlmkit.boxes`, `vlmkit.internvl.tiling`, ...) is imported on
its first use as an attribute (PEP 562), and `dir(vlmkit)` lists them."""
__version__ = "0.0.1"

def _lazy_submodules(package:str, path, namespace:dict):
    "PEP 562 `__getattr__` and `__dir__` for `package`: its public submodules import on first attribute access."
    def submodules() -> list[str]:
        import pkgutil
        return sorted(m.name for m in pkgutil.iter_modules(path) if not m.name.startswith('_'))
    def __getattr__(name:str):
        import importlib
        if name in submodules(): return importlib.import_module(f"{package}.{name}")  # also sets it on the package
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    def __dir__() -> list[str]: return sorted(set(namespace) | set(submodules()))
    return __getattr__, __dir__

__getattr__, __dir__ = _lazy_submodules(__name__, __path__, globals())
