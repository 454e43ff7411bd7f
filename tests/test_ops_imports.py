"""ops/ is pure maths: importing it must add nothing beyond what `import torch` already loads."""

import json
import subprocess
import sys

CODE = """
import sys, json
import torch
before = set(sys.modules)
import rewardlab.ops
added = sorted(set(sys.modules) - before)
print(json.dumps(added))
"""


def test_ops_import_only_torch():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout
    added = json.loads(out.strip().splitlines()[-1])
    foreign = [m for m in added if not m.startswith("rewardlab")]
    assert not foreign, f"rewardlab.ops imported modules beyond torch: {foreign}"
    assert "rewardlab.ops.kl" in added  # the check is live: the package really was imported here
