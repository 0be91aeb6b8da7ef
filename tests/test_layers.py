"""Where things live: every vlmkit module's imports point down the layer map (DESIGN.md), no family package imports
another, the tour imports no test utilities, and a public name means one thing across vlmkit. Read from the source
(ast), so lazy imports inside functions count too, and nothing is imported to check it."""
import ast
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'vlmkit'

# module (or package) -> layer; a module takes the layer of its longest listed prefix.
LAYERS = {
    'vlmkit': 0, 'vlmkit._modidx': 0,
    # core (notebooks 00-09): family-independent machinery
    'vlmkit.boxes': 0, 'vlmkit.images': 0, 'vlmkit.video': 0, 'vlmkit.testing': 0, 'vlmkit.attention': 0,
    'vlmkit.resample': 0, 'vlmkit.conversation': 0, 'vlmkit.packing': 0, 'vlmkit.checkpointing': 0,
    'vlmkit.generation': 0, 'vlmkit.family': 0,
    'vlmkit.loss': 0, 'vlmkit.compiling': 0,  # core by DESIGN.md, though their notebooks are numbered 50 and 52
    # model families (10-29): one package each
    'vlmkit.ovis': 10, 'vlmkit.internvl': 10, 'vlmkit.qwen': 10,
    'vlmkit.lora': 30,  # adaptation
    'vlmkit.data': 40, 'vlmkit.tools': 40, 'vlmkit.collation': 40,  # data
    'vlmkit.sft': 50, 'vlmkit.rewards': 50, 'vlmkit.rollout': 50, 'vlmkit.grpo': 50, 'vlmkit.cli': 70, 'vlmkit.__main__': 70,  # training; apps (`python -m vlmkit` is the CLI)
    'vlmkit.refcoco': 60, 'vlmkit.grounding': 60, 'vlmkit.grounding_viz': 60,  # evaluation
    'vlmkit.chat': 70, 'vlmkit.infer': 70, 'vlmkit.demo': 70,  # apps
    # the other apps (70s) get their rows when their modules arrive
    'vlmkit.tour': 80,
}
FAMILIES = ('vlmkit.ovis', 'vlmkit.internvl', 'vlmkit.qwen')
FORBIDDEN = {'vlmkit.tour': ('vlmkit.testing',)}  # the tour runs on what users get, not on test utilities
# Public names defined in more than one module, allowed because they are the same constant with the same meaning.
SAME_MEANING = {'IMAGE_PLACEHOLDER', 'VIDEO_PLACEHOLDER', 'VISUAL_ATOM_ID', 'INDICATOR_IDS'}
# Ovis2.5's official generation API keeps its names: each is the engine's same-named function or class, called
# with Ovis's arguments and defaults (one meaning, a family's defaults), never a separate implementation.
OFFICIAL_WRAPPERS = {'vlmkit.ovis.generation': ('vlmkit.generation', {'generate', 'stream_generate', 'BatchDecoder', 'split_thinking'})}


def module_name(path:Path) -> str:
    parts = path.relative_to(ROOT).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)

def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob('*.py'))}

def layer_of(mod:str) -> int|None:
    "The layer of `mod`: its own row or its closest listed package's (the top-level `vlmkit` row covers only itself)."
    if mod == 'vlmkit': return LAYERS[mod]
    while '.' in mod:
        if mod in LAYERS: return LAYERS[mod]
        mod = mod.rpartition('.')[0]
    return None

def family_of(mod:str) -> str|None:
    return next((f for f in FAMILIES if mod == f or mod.startswith(f + '.')), None)

def imported(source:str, mod:str, is_package:bool=False, known=()) -> list[tuple[int, str]]:
    "(line, module) for every vlmkit module `source` (the text of module `mod`) imports, relative imports resolved."
    package = mod if is_package else mod.rpartition('.')[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import): names = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                up = package.split('.')
                up = up[:len(up) - node.level + 1]
                base = '.'.join(up + ([base] if base else []))
            names = [(base, a.name) for a in node.names]
        else: continue
        for base, name in names:
            if base != 'vlmkit' and not base.startswith('vlmkit.'): continue
            sub = f'{base}.{name}' if name else base  # `from vlmkit.ovis import modeling` imports a module
            out.append((node.lineno, sub if sub in known else base))
    return list(dict.fromkeys(out))

def problems(source:str, mod:str, is_package:bool=False, known=()) -> list[str]:
    "What is wrong with the imports of module `mod` whose text is `source`."
    here = layer_of(mod)
    if here is None: return [f"{mod} is not in the layer table of tests/test_layers.py: add it with its layer"]
    found = []
    for line, dep in imported(source, mod, is_package, known):
        there = layer_of(dep)
        if there is None: found.append(f"{mod}:{line} imports {dep}, which is not in the layer table")
        elif there > here: found.append(f"{mod}:{line} imports {dep} (layer {there}) from layer {here}: imports point down the layer map")
        elif family_of(dep) and family_of(mod) and family_of(dep) != family_of(mod):
            found.append(f"{mod}:{line} imports {dep}: a family package does not import another family's")
        elif any(dep == f or dep.startswith(f + '.') for f in FORBIDDEN.get(mod, ())):
            found.append(f"{mod}:{line} imports {dep}, which {mod} must not use")
    return found


def test_every_import_points_down_the_layer_map():
    mods = modules()
    found = [p for m, path in mods.items() for p in problems(path.read_text(), m, path.name == '__init__.py', set(mods))]
    assert not found, '\n'.join(found)


@pytest.mark.parametrize('mod, source, says', [
    ('vlmkit.video', "def load_video():\n    from vlmkit.internvl.tiling import tiles_fast\n", 'vlmkit.video:2 imports vlmkit.internvl.tiling (layer 10) from layer 0'),
    ('vlmkit.packing', "from .lora import apply_lora\n", 'imports vlmkit.lora (layer 30) from layer 0'),
    ('vlmkit.ovis.modeling', "from ..internvl import tiling\n", "imports vlmkit.internvl.tiling: a family package does not import another family's"),
    ('vlmkit.tour', "from vlmkit.testing import n_params\n", 'imports vlmkit.testing, which vlmkit.tour must not use'),
    ('vlmkit.newthing', "import torch\n", 'vlmkit.newthing is not in the layer table'),
    ('vlmkit.lora', "import vlmkit.nowhere\n", 'imports vlmkit.nowhere, which is not in the layer table'),
])
def test_the_check_fails_on_a_bad_import(mod, source, says):
    known = set(modules())
    found = problems(source, mod, known=known)
    assert len(found) == 1 and says in found[0], found


def test_good_imports_pass():
    known = set(modules())
    assert problems("from ..loss import labelled_lm_loss\nfrom . import preprocessing\nimport torch\n", 'vlmkit.ovis.modeling', known=known) == []
    assert problems("from .. import _lazy_submodules\n", 'vlmkit.qwen', is_package=True, known=known) == []
    assert imported("from . import preprocessing\n", 'vlmkit.ovis.modeling', known={'vlmkit.ovis.preprocessing'}) == [(1, 'vlmkit.ovis.preprocessing')]


def public_names() -> dict[str, list[str]]:
    "name -> modules whose `__all__` lists it."
    names = {}
    for mod, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == '__all__' for t in node.targets):
                for name in ast.literal_eval(node.value): names.setdefault(name, []).append(mod)
    return names

def constant(path:Path, name:str):
    "The literal value module `path` assigns to `name` at its top level (`a = ...` or `a, b = ..., ...`)."
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.Assign): continue
        for t in node.targets:
            if isinstance(t, ast.Name) and t.id == name: return ast.literal_eval(node.value)
            if isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple):
                for target, value in zip(t.elts, node.value.elts):
                    if getattr(target, 'id', None) == name: return ast.literal_eval(value)
    raise LookupError(f"{path}: no top-level literal assignment to {name}")

def test_a_public_name_means_one_thing():
    names = public_names()
    mods = modules()
    for wrapper, (engine, wrapped) in OFFICIAL_WRAPPERS.items():
        src = mods[wrapper].read_text()
        for n in wrapped:
            assert set(names.get(n, ())) == {wrapper, engine}, (n, names.get(n))
            body = ast.get_source_segment(src, next(d for d in ast.parse(src).body if getattr(d, 'name', None) == n))
            assert 'engine.' in body or 'BatchDecoder(' in body, f"{wrapper}.{n} does not delegate to {engine}"  # the engine's, or its BatchDecoder subclass
    allowed = {n for _, ns in OFFICIAL_WRAPPERS.values() for n in ns}
    twice = {n: ms for n, ms in names.items() if len(ms) > 1 and n not in SAME_MEANING | allowed}
    assert not twice, f"public names defined in several modules (give each meaning its own name): {twice}"
    for n in SAME_MEANING & set(names):
        values = {m: constant(mods[m], n) for m in names[n]}
        as_list = lambda v: list(v) if isinstance(v, (tuple, list)) else v
        assert len({repr(as_list(v)) for v in values.values()}) == 1, f"{n} differs between modules: {values}"


# ---- nothing outside a family's package branches on a family's name ----
FAMILY_NAMES = {'ovis2_5', 'internvl3_5', 'qwen2_5_vl'}
# Where a family's name may be compared or keyed: its own package, and the registry that names them.
NAME_HOMES = ('vlmkit.ovis', 'vlmkit.internvl', 'vlmkit.qwen', 'vlmkit.family')

def _names_in(node) -> set[str]:
    "Family names among the string constants `node` is, or holds as a tuple, list or set."
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {e.value for e in items if isinstance(e, ast.Constant) and e.value in FAMILY_NAMES}

def family_branches(source:str, mod:str) -> list[str]:
    "(line: what) for each comparison with a family's name, table keyed by one, or `case` on one in module `mod`'s `source`."
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare): hits = set().union(*(_names_in(x) for x in (node.left, *node.comparators)))
        elif isinstance(node, ast.Dict): hits = set().union(*(_names_in(k) for k in node.keys if k is not None))
        elif isinstance(node, ast.MatchValue): hits = _names_in(node.value)
        else: continue
        if hits: found.append(f"{mod}:{node.lineno} {type(node).__name__.lower()} on {sorted(hits)}")
    return found

def test_nothing_outside_a_family_package_branches_on_its_name():
    found = [f for m, path in modules().items() if not any(m == h or m.startswith(h + '.') for h in NAME_HOMES)
             for f in family_branches(path.read_text(), m)]
    assert not found, "family names compared or keyed outside the family packages (ask the Family instead):\n" + '\n'.join(found)

@pytest.mark.parametrize('source, says', [
    ("if family == 'qwen2_5_vl': pass\n", "compare on ['qwen2_5_vl']"),
    ("ok = name in ('ovis2_5', 'internvl3_5')\n", "compare on ['internvl3_5', 'ovis2_5']"),
    ("TABLE = {'internvl3_5': 1}\n", "dict on ['internvl3_5']"),
    ("match f:\n    case 'ovis2_5': pass\n", "matchvalue on ['ovis2_5']"),
])
def test_the_family_branch_check_fails_on_a_branch(source, says):
    found = family_branches(source, 'vlmkit.sft')
    assert len(found) == 1 and says in found[0], found

def test_the_family_branch_check_passes_a_use():
    assert family_branches("parse_boxes(text, 'internvl3_5')\nfam = FAMILIES['ovis2_5']\n", 'vlmkit.tour') == []
