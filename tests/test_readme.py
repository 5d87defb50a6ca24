"""The README's Python API block runs as written, on the bundled MiniLM (docs that users copy must work)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_api_block() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_api_block_runs(tmp_path, monkeypatch):
    from adapterkit.models import load_model

    lines = []
    for line in python_api_block().splitlines():
        if line.lstrip().startswith("...") or "hub_adapter/" in line:  # a training loop; an AdapterHub download
            continue
        lines.append(line.replace("with ak.use_adapter(model, \"sentiment\"): ...",
                                  "with ak.use_adapter(model, \"sentiment\"): pass"))
    code = "\n".join(lines)
    assert "ak.Average(" in code and "ak.predict_mixed(" in code  # the block still shows what this test runs
    monkeypatch.chdir(tmp_path)  # its out/ directories
    other_model, _ = load_model("minilm", "classification", num_labels=2)
    scope = {"other_model": other_model}
    exec(compile(code, "README.md (Python API)", "exec"), scope)
    import adapterkit as ak

    out = ak.predict_parallel(scope["model"], scope["texts"], ["sentiment", "topic"], tokenizer=scope["tokenizer"])
    assert tuple(out["sentiment"].shape) == (2, 2) and tuple(out["topic"].shape) == (2, 20)  # as the comment says
    assert (tmp_path / "out" / "sentiment" / "adapter_model.safetensors").exists()
