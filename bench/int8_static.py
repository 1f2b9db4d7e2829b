"""Dynamic against static int8 quantization of the image tower (issue #16's choice).

    python bench/int8_static.py [--calibration 64] [--photos 128] [--runs 3]

Run after bench/onnx_ingest.py, which leaves the fp32 and the dynamic int8 exports of
the random ViT-B/32 in bench/out/onnx-cache. Static quantization (onnxruntime's
quantize_static, QDQ, MinMax calibration over --calibration of the user's own photos,
here bench/photos.py's 640x480 set) is built here from the fp32 export. For each tower:
images/s at batches of 32 with 2 threads, and the cosine distance of its vectors to
fp32's on --photos other photos, each encoded alone and within a batch (dynamic
quantization scales a batch's activations together; static does not). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.photos import OUT, make_photos  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--photos", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from PIL import Image

    from clipsearch.encoders.onnx_image import Preprocess

    cache = OUT / "onnx-cache"
    fp32_dir = next((cache / "image-towers").iterdir())
    int8_dir = next((cache / "image-towers-int8").iterdir())
    manifest = json.loads((fp32_dir / "manifest.json").read_text())
    preprocess = Preprocess.from_dict(manifest["preprocess"])
    files = sorted(make_photos("small", args.calibration + args.photos).iterdir())
    pixels = preprocess([Image.open(f).convert("RGB") for f in files])
    calibration, photos = pixels[:args.calibration], pixels[args.calibration:]

    probe = ort.InferenceSession(str(fp32_dir / "image.onnx"), providers=["CPUExecutionProvider"])
    input_name = probe.get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: calibration[i:i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        static_path = Path(tmp) / "static.onnx"
        started = time.perf_counter()
        quantize_static(str(fp32_dir / "image.onnx"), str(static_path), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        use_external_data_format=True)
        static_s = time.perf_counter() - started
        towers = {"fp32": fp32_dir / "image.onnx", "int8 dynamic": int8_dir / "image.onnx", "int8 static": static_path}
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    for name, path in towers.items()}

        def encode(name: str, batch: np.ndarray) -> np.ndarray:
            out = sessions[name].run(None, {input_name: batch})[0]
            return out / np.linalg.norm(out, axis=1, keepdims=True)

        result: dict = {"load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                        "static_build_s": round(static_s, 1)}
        reference = np.concatenate([encode("fp32", photos[i:i + 32]) for i in range(0, len(photos), 32)])
        for name in towers:
            rates = []
            for _ in range(args.runs):
                t = time.perf_counter()
                encode(name, photos[:32])
                rates.append(32 / (time.perf_counter() - t))
            batched = np.concatenate([encode(name, photos[i:i + 32]) for i in range(0, len(photos), 32)])
            alone = np.concatenate([encode(name, photos[i:i + 1]) for i in range(len(photos))])
            result[name] = {"img_s": round(float(np.median(rates)), 1),
                            "cosine_distance_to_fp32_batched": {"mean": float(np.mean(1 - np.sum(batched * reference, 1))),
                                                                "max": float(np.max(1 - np.sum(batched * reference, 1)))},
                            "cosine_distance_to_fp32_alone": {"mean": float(np.mean(1 - np.sum(alone * reference, 1))),
                                                              "max": float(np.max(1 - np.sum(alone * reference, 1)))}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
