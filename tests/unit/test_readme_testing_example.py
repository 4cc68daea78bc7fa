"""The README's "Testing your declarations" example runs, exactly as printed."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text.split("## Testing your declarations", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section should hold exactly one python example"
    return blocks[0]


def test_the_readme_testing_example_runs() -> None:
    from cachesync.registry import default_registry

    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(_example(), str(README), "exec"), namespace)
    tests = [fn for name, fn in namespace.items() if name.startswith("test_") and callable(fn)]
    assert len(tests) == 2
    try:
        for test in tests:
            test()
    finally:
        spec = default_registry.get(None, "readme_members")
        if spec is not None:
            default_registry.remove(spec)
