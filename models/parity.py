"""Check the shipped models' fixtures against onnxruntime: every fixture row's outputs must be
what onnxruntime computes now from the same normalised input (the Rust test
`edge-daemon/tests/models.rs` checks tract against the same outputs, so together they compare
tract with onnxruntime). Needs only onnxruntime and numpy.

Usage: python3 models/parity.py [models/shipped]
"""

import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort

TOLERANCE = 1e-5


def main() -> int:
    here = pathlib.Path(__file__).resolve().parent
    shipped = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else here / "shipped"
    fixtures = sorted((shipped / "fixtures").glob("*.json"))
    if not fixtures:
        print(f"parity: no fixtures in {shipped / 'fixtures'}", file=sys.stderr)
        return 1
    models = sorted(p.name for p in shipped.glob("*.onnx"))
    covered = sorted(json.loads(f.read_text())["model"] for f in fixtures)
    if models != covered:
        print(f"parity: models {models} but fixtures for {covered}", file=sys.stderr)
        return 1
    failed = False
    for f in fixtures:
        fx = json.loads(f.read_text())
        # Graph optimisations off: onnxruntime then computes each operator as ONNX defines it
        # (as tract does); optimised, it fuses QDQ and MatMul into integer kernels that round
        # differently now and then (see models/train.py).
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        s = ort.InferenceSession(str(shipped / fx["model"]), so, providers=["CPUExecutionProvider"])
        x = np.array(fx["normalised"], dtype=np.float32)
        got = s.run(None, {"features": x})[0]
        want = np.array(fx["outputs"], dtype=np.float32)
        worst = float(np.abs(got - want).max())
        ok = got.shape == want.shape and worst <= TOLERANCE
        failed |= not ok
        print(f"parity: {fx['model']}: {len(x)} rows, onnxruntime {ort.__version__} differs from "
              f"the fixture by at most {worst:.2e} ({'ok' if ok else 'FAIL'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
