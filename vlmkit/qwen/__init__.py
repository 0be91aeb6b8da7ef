from .. import _lazy_submodules
__getattr__, __dir__ = _lazy_submodules(__name__, __path__, globals())
