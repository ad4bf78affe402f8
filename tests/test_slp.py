"""runtime/ops/slp.py: kernels built with LLVM's SLP vectoriser compile when a model first needs them, never when
the runtime is imported, and with Numba's setting left as it was."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numba
import numpy as np

from edgepack.runtime.ops import slp


def _add(x, out):
    for i in range(x.shape[0]):
        out[i] = x[i] + 1.0


def test_ready_compiles_every_signature_once_with_the_setting_restored():
    saved = numba.config.SLP_VECTORIZE
    sig = numba.void(numba.types.Array(numba.float32, 1, "C"), numba.types.Array(numba.float32, 1, "C"))
    k = slp.slp_kernel(_add, [sig])
    assert not k.signatures  # nothing compiled where it is defined
    assert slp.ready(k) is k and len(k.signatures) == 1
    assert numba.config.SLP_VECTORIZE == saved
    assert slp.ready(k) is k and len(k.signatures) == 1  # the second call compiles nothing
    out = np.zeros(3, np.float32)
    k(np.arange(3, dtype=np.float32), out)
    np.testing.assert_array_equal(out, [1, 2, 3])


# a fresh process and an empty cache folder: what `import edgepack.runtime` compiles, then what binding a model
# with a blocked convolution compiles with SLP
_PROBE = r"""
import json, sys
import numpy as np
from numba.core.dispatcher import Dispatcher
import edgepack.runtime
from edgepack.runtime.ops import conv_blocked, slp
compiled = sorted(f"{name}.{attr}" for name, mod in list(sys.modules.items()) if name.startswith("edgepack.")
                  for attr, obj in vars(mod).items() if isinstance(obj, Dispatcher) and obj.signatures)
pending = conv_blocked.block_taps_tiled in slp._PENDING
print(json.dumps({"compiled_at_import": compiled, "pending": pending}))
"""


def test_importing_the_runtime_compiles_no_kernel(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    r = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"compiled_at_import": [], "pending": True}
