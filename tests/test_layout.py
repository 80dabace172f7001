"""The package's layout holds: no import cycles, no library module importing a command, each role folder
importing only from the folders before it in the data flow, no module past ~500 lines, and the model and
training code importable without TensorFlow or SeqIO (the GPU image has neither)."""
import ast
import os
import subprocess
import sys

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "symbol_tuning")
TASKS = os.path.join(os.path.dirname(PACKAGE), "tasks")
COMMANDS = {f"symbol_tuning.{name}" for name in
            ("cli", "train", "eval", "sweep", "plan", "demo", "import_hf", "export_hf", "__main__")}
# Role folders in the order data flows; a module may import from its own folder and the ones before it.
LAYERS = ("symbol_tuning.data", "symbol_tuning.models", "symbol_tuning.training", "symbol_tuning.evaluation")
MAX_LINES = 500


def _modules() -> dict[str, str]:
    """Dotted module name -> file, for the package and `tasks/` (installed as symbol_tuning.tasks)."""
    out = {}
    for top, prefix in ((PACKAGE, "symbol_tuning"), (TASKS, "symbol_tuning.tasks")):
        for root, _, files in os.walk(top):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, name), top)[:-3].replace(os.sep, ".")
                    dotted = prefix if rel == "__init__" else f"{prefix}.{rel}".removesuffix(".__init__")
                    out[dotted] = os.path.join(root, name)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (top-level and inside functions)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        is_package = path.endswith("__init__.py")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(module: str) -> int | None:
    if module == "symbol_tuning.tasks" or module.startswith("symbol_tuning.tasks."):
        return 0  # SeqIO-style registrations of data tasks
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    return None


def test_import_graph_is_read_from_every_module_and_function_level_imports():
    graph = import_graph()
    assert "symbol_tuning.training.trainer" in graph["symbol_tuning.train"]  # imported inside train()
    assert "symbol_tuning.models.base" in graph["symbol_tuning.training.trainer"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_package_has_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_no_library_module_imports_a_command_module():
    arrows = sorted(f"{src} -> {dst}" for src, dsts in import_graph().items() if src not in COMMANDS
                    for dst in dsts if dst in COMMANDS)
    assert arrows == []


def test_role_folders_import_only_from_the_folders_before_them_in_the_data_flow():
    arrows = []
    for src, dsts in import_graph().items():
        if src in COMMANDS or _layer(src) is None:
            continue
        arrows += [f"{src} -> {dst}" for dst in dsts if _layer(dst) is not None and _layer(dst) > _layer(src)]
    assert sorted(arrows) == []


def test_no_module_is_longer_than_500_lines():
    long = {}
    for name, path in _modules().items():
        with open(path, encoding="utf-8") as f:
            lines = sum(1 for _ in f)
        if lines > MAX_LINES:
            long[name] = lines
    assert long == {}


def test_models_and_training_import_without_tensorflow_or_seqio():
    blocked = "import sys\nfor m in ('tensorflow', 'tensorflow_datasets', 'seqio'):\n    sys.modules[m] = None\n"
    wanted = sorted(m for m in _modules() if _layer(m) in (1, 2))
    code = blocked + "".join(f"import {m}\n" for m in wanted)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_family_table_and_the_token_layout_know_the_same_families():
    from symbol_tuning.data.token_layout import FAMILIES as LAYOUT_FAMILIES
    from symbol_tuning.models.families import FAMILIES

    assert tuple(FAMILIES) == LAYOUT_FAMILIES
    assert all(name == family.name for name, family in FAMILIES.items())
