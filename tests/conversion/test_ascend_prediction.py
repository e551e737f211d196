"""What the om will most likely give: the Ascend graph at 1216 with its custom ops replaced by references that
follow CANN's 310P kernels (RoiExtractor's level rule and RoI clamp; BatchMultiClassNMS fed float16), against
the torch model on the oracle photographs. The per-photograph figures are in docs/conversion.md."""
from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from conversion_helpers import network_inputs, ort_session  # noqa: E402

from conversion.export.exporter import export_onnx  # noqa: E402
from conversion.export.lowering import lower_ascend_graph  # noqa: E402
from evaluation.matching import match_detections  # noqa: E402

pytestmark = pytest.mark.slow
SIZE = 1216
TOLERANCES = ((0.05, 1e-4), (1.0, 1e-3), (4.0, 5e-2))  # (corner px, score): strict, float16 rounding, coarse
CASES = {  # (NMS inputs in float16, RoiExtractor reference)
    "CANN RoiExtractor, float32 NMS": (False, "cann"),
    "mmdet RoiExtractor, float16 NMS": (True, "mmdet"),
    "CANN RoiExtractor, float16 NMS (the om)": (True, "cann"),
}


def test_cann_faithful_lowering_predicts_the_om(detector, photos, torch_reference, tmp_path):
    graphs = {fp16: export_onnx(detector, tmp_path / f"ascend_1216_{fp16}.onnx", target="ascend", batch=1,
                                size=SIZE, nms_fp16=fp16) for fp16 in (False, True)}
    lowered = {case: lower_ascend_graph(graphs[fp16], roi=roi) for case, (fp16, roi) in CASES.items()}
    modes = {n.attribute[0].s for n in lowered["CANN RoiExtractor, float32 NMS"].graph.node if n.op_type == "RoiAlign"}
    assert modes == {b"output_half_pixel"}  # the CANN reference pools unaligned (shifted, clamped), not mmcv's way
    sessions = {case: ort_session(model.SerializeToString()) for case, model in lowered.items()}
    moved = {(case, tol): 0 for case in CASES for tol in TOLERANCES}
    total = 0
    print(f"\nAscend graph at {SIZE} against torch fp32: torch detections with no partner of the same class within "
          f"{' / '.join(f'{b:g} px and {s:g}' for b, s in TOLERANCES)}, per photograph")
    for photo in photos:
        images, _, _ = network_inputs([photo], SIZE)
        ref = torch_reference(photo, SIZE)
        row = []
        for case, session in sessions.items():
            dets, labels = session.run(["dets", "labels"], {"input": images})
            counts = []
            for tol in TOLERANCES:
                result = match_detections(ref[0], ref[1], dets[0], labels[0], *tol)
                moved[case, tol] += result.unmatched
                counts.append(str(result.unmatched))
            row.append(f"{case}: {' / '.join(counts)}")
        total += result.ref_count
        print(f"{photo.name} ({result.ref_count}): " + "; ".join(row))
    print(f"all ({total}): " + "; ".join(f"{case}: {' / '.join(str(moved[case, t]) for t in TOLERANCES)}"
                                     for case in CASES))
    assert total > 0
    # the CANN RoiExtractor alone: its level and clamp rules touch few RoIs of these photographs
    assert moved["CANN RoiExtractor, float32 NMS", TOLERANCES[0]] <= 0.1 * total
    # float16 NMS inputs round every box (strictly, all move) and, through the proposals, shift the second stage
    for case in ("mmdet RoiExtractor, float16 NMS", "CANN RoiExtractor, float16 NMS (the om)"):
        assert moved[case, TOLERANCES[-1]] <= 0.2 * total
