"""Write mmpose_configs.json: MMEngine's own reading of the Python configs that posecore.pyconfig reads.

Run with an environment that has MMEngine 0.10.7
(e.g. ``/work/mmpose-ref/bin/python tests/golden/make_mmpose_configs.py``): for each .py file under mmpose_configs/
(MMPose 1.3.2's own) and pyconfig_cases/ (every construct the reader evaluates, and MMEngine's merge rules),
``mmengine.Config.fromfile(path).to_dict()``, keyed by the path relative to this folder. tests/test_mmpose_import.py
reads the same files with posecore.pyconfig and compares; it needs no MMEngine.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmengine import Config

HERE = Path(__file__).parent
OUT = HERE / "mmpose_configs.json"

files = sorted((HERE / "mmpose_configs").rglob("*.py")) + sorted((HERE / "pyconfig_cases").glob("*.py"))
golden = {file.relative_to(HERE).as_posix(): Config.fromfile(file).to_dict() for file in files}
OUT.write_text(json.dumps(golden, indent=1) + "\n", encoding="utf-8")
print(f"{OUT}: {len(golden)} configs")
