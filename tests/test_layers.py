"""Per-layer quantization error and selective quantization on the tiny model."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from petq.errors import SpecError
from petq.layers import LayerStat, worst_layers

# The tiny model's full-INT8 graph: every op computes in int8.
TINY_INT8_OPS = ["CONV_2D", "MAX_POOL_2D", "CONV_2D", "MEAN", "FULLY_CONNECTED"]
CALIBRATION, DEBUG = 12, 8


def stat(index: int, error: float | None, name: str | None = None) -> LayerStat:
    scale = None if error is None else 0.1
    return LayerStat(
        index=index, name=name or f"layer{index}", op="CONV_2D", error=error,
        rmse=0.1 * (error or 1.0), mean_abs_error=0.05, max_abs_error=0.4, scale=scale,
        zero_point=None if error is None else -128,
        range_used=None if error is None else (0.0, 25.5), range_observed=(0.0, 3.0))


def test_layer_stat_round_trips_through_json():
    stats = [stat(0, 0.25, "a;b/c:0"), stat(3, None)]
    back = [LayerStat.from_dict(json.loads(json.dumps(s.to_dict()))) for s in stats]
    assert back == stats
    assert isinstance(back[0].range_used, tuple)


def test_worst_layers_picks_the_largest_errors_ties_by_graph_order():
    stats = [stat(0, 0.1), stat(1, 0.5), stat(2, None), stat(3, 0.2), stat(4, 0.5)]
    assert worst_layers(stats, 1) == ["layer1"]
    assert worst_layers(stats, 2) == ["layer1", "layer4"]
    assert worst_layers(stats, 4) == ["layer1", "layer4", "layer3", "layer0"]
    assert worst_layers(stats, 0) == []
    with pytest.raises(SpecError, match="4 quantized layers"):
        worst_layers(stats, 5)
    with pytest.raises(SpecError):
        worst_layers(stats, -1)


# ------------------------------------------------------------------ real conversions


def integer_ops(model: bytes) -> list[tuple[str, str, type]]:
    """(op, output name, input dtype) of the ops whose output is int8, read straight from
    LiteRT's op list (QUANTIZE/DEQUANTIZE and XNNPACK's DELEGATE nodes left out)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    found = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE", "DELEGATE"):
            continue
        out = interpreter._get_tensor_details(op["outputs"][0], 0)
        if out["dtype"] == np.int8:
            found.append((op["op_name"], out["name"]))
    return found


def run_model(model: bytes, samples: list[np.ndarray]) -> tuple[np.dtype, np.ndarray]:
    """(input dtype, float scores) of a .tflite model on float samples, as petq feeds it."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scores = []
    for x in samples:
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] == np.int8:
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        scores.append(y)
    return inp["dtype"], np.concatenate(scores)


@pytest.fixture(scope="module")
def samples(pet_root, tiny_model) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(calibration, debug): preprocessed trainval images, one per batch."""
    from petq.data import PetDataset, decode, open_image, preprocess
    from petq.types import load_contract

    dataset = PetDataset.load(pet_root)
    contract = load_contract(tiny_model)
    rows = [preprocess(decode(open_image(dataset.image_path(s.image_id)), contract.input_size),
                       contract) for s in dataset.trainval[::2][:CALIBRATION + DEBUG]]
    return rows[:CALIBRATION], rows[CALIBRATION:]


@pytest.fixture(scope="module")
def session(tiny_model, samples):
    from petq.layers import ConverterDebug

    return ConverterDebug(tiny_model, samples[0])


@pytest.fixture(scope="module")
def stats(session, samples) -> list[LayerStat]:
    return session.layer_stats(samples[1])


@pytest.fixture(scope="module")
def plain(session) -> bytes:
    return session.selective_int8(())


@pytest.fixture(scope="module")
def fp32(tiny_model) -> bytes:
    import tensorflow as tf

    from petq.convert import captured_output
    from petq.runtime import load_keras_model

    with captured_output():
        return tf.lite.TFLiteConverter.from_keras_model(load_keras_model(tiny_model)).convert()


@pytest.mark.slow
def test_stats_cover_every_quantized_layer_in_graph_order(stats, plain):
    from petq.layers import quantized_ops

    ops = integer_ops(plain)
    assert [op for op, _ in ops] == TINY_INT8_OPS
    assert quantized_ops(plain) == ops
    assert [(s.op, s.name) for s in stats] == ops
    indices = [s.index for s in stats]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)


@pytest.mark.slow
def test_stats_are_finite_and_consistent(stats):
    for s in stats:
        values = [s.error, s.rmse, s.mean_abs_error, s.max_abs_error, s.scale]
        assert all(math.isfinite(v) and v >= 0 for v in values), s
        assert s.error == pytest.approx(s.rmse / s.scale)
        assert s.mean_abs_error <= s.rmse <= s.max_abs_error
        assert s.range_used == pytest.approx((s.scale * (-128 - s.zero_point),
                                              s.scale * (127 - s.zero_point)))
        low, high = s.range_observed
        assert low < high
    convs = [s for s in stats if s.op == "CONV_2D"]
    assert all(s.range_observed[0] == 0.0 for s in convs)  # ReLU outputs
    assert all(s.error > 0.05 for s in convs)  # rounding alone is about 0.29 steps
    # A max pool is checked against its own dequantized output: nothing is lost there.
    assert next(s for s in stats if s.op == "MAX_POOL_2D").error < 1e-3


@pytest.mark.slow
def test_stats_agree_with_the_debuggers_own_report(tiny_model, samples, stats):
    """The debugger's run() averages per-sample MSE; with equal-sized samples that is the
    pooled MSE, so rmse**2 must match it; its max error is a mean of per-sample maxima."""
    import tensorflow as tf

    from petq.convert import captured_output
    from petq.runtime import load_keras_model

    calibration, debug = samples
    with captured_output():
        converter = tf.lite.TFLiteConverter.from_keras_model(load_keras_model(tiny_model))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x] for x in calibration)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: ([x] for x in debug))
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    report = {row["tensor_name"]: row for row in csv.DictReader(dump)}
    assert set(report) == {s.name for s in stats}
    for s in stats:
        row = report[s.name]
        assert float(row["scale"]) == pytest.approx(s.scale)
        assert int(row["zero_point"]) == s.zero_point
        assert s.rmse ** 2 == pytest.approx(float(row["mean_squared_error"]), rel=0.02, abs=1e-12)
        assert s.max_abs_error >= float(row["max_abs_error"]) * 0.99 - 1e-6  # float32 noise


@pytest.mark.slow
def test_whole_model_reference_compares_the_same_layers(session, samples, stats):
    whole = session.layer_stats(samples[1], reference="model")
    assert [(s.index, s.name, s.op) for s in whole] == [(s.index, s.name, s.op) for s in stats]
    # The first layer sees the same quantized input either way.
    assert whole[0].rmse == pytest.approx(stats[0].rmse, rel=1e-3)
    # Downstream of a quantized layer, the whole-model error includes what came in.
    pool = 1
    assert whole[pool].error > 100 * stats[pool].error
    with pytest.raises(SpecError, match="reference"):
        session.layer_stats(samples[1], reference="both")


@pytest.mark.slow
@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keep_n_worst_layers_in_float(session, samples, stats, plain, keep):
    names = worst_layers(stats, keep)
    model = session.selective_int8(names)
    left = integer_ops(model)
    assert len(left) == len(integer_ops(plain)) - keep
    assert not {name for _, name in left} & set(names)
    dtype, scores = run_model(model, samples[1])
    assert dtype == np.int8  # int8 I/O, like petq's other INT8 variants
    assert scores.shape == (DEBUG, 4) and np.isfinite(scores).all()


@pytest.mark.slow
def test_keeping_nothing_quantizes_like_the_converter(tiny_model, samples, plain):
    """The keep-N variants are compared with the converter's own INT8 variant: with nothing
    kept in float, the debugger's model has the same tensors, scales and outputs."""
    import tensorflow as tf

    from petq.convert import captured_output
    from petq.runtime import load_keras_model

    calibration, debug = samples
    with captured_output():
        converter = tf.lite.TFLiteConverter.from_keras_model(load_keras_model(tiny_model))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x] for x in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
        reference = converter.convert()

    def tensors(model: bytes) -> dict[str, tuple]:
        from ai_edge_litert.interpreter import Interpreter

        return {t["name"]: (t["dtype"], tuple(t["quantization_parameters"]["scales"]),
                            tuple(t["quantization_parameters"]["zero_points"]))
                for t in Interpreter(model_content=model).get_tensor_details()}

    assert tensors(plain) == tensors(reference)
    assert np.array_equal(run_model(plain, debug)[1], run_model(reference, debug)[1])


@pytest.mark.slow
def test_selective_int8_function_and_float_io(tiny_model, samples, stats, session):
    from petq.layers import selective_int8

    names = worst_layers(stats, 1)
    assert selective_int8(tiny_model, samples[0], names) == session.selective_int8(names)
    dtype, scores = run_model(session.selective_int8(names, int8_io=False), samples[1])
    assert dtype == np.float32 and np.isfinite(scores).all()


@pytest.mark.slow
def test_selective_int8_refuses_what_it_cannot_do(session, stats):
    with pytest.raises(SpecError, match="no layer named 'nope'"):
        session.selective_int8(["nope"])
    pool = next(s.name for s in stats if s.op == "MAX_POOL_2D")
    with pytest.raises(SpecError, match="same-scale"):
        session.selective_int8([pool])
    with pytest.raises(SpecError, match="nothing quantized"):
        session.selective_int8([s.name for s in stats])


@pytest.mark.slow
def test_a_configured_converter_keeps_its_io_and_granularity(tiny_model, samples):
    """petq.convert hands over its own converter: float I/O and per-tensor stay so."""
    import tensorflow as tf

    from petq.layers import ConverterDebug
    from petq.runtime import load_keras_model

    converter = tf.lite.TFLiteConverter.from_keras_model(load_keras_model(tiny_model))
    converter._experimental_disable_per_channel = True
    model = ConverterDebug(converter, samples[0]).selective_int8(())
    dtype, scores = run_model(model, samples[1])
    assert dtype == np.float32 and np.isfinite(scores).all()
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    weights = [t for t in interpreter.get_tensor_details()
               if t["dtype"] == np.int8 and len(t["shape"]) == 4 and t["shape"][0] in (8, 16)]
    assert weights and all(len(t["quantization_parameters"]["scales"]) == 1 for t in weights)


@pytest.mark.slow
def test_converter_layer_stats_is_the_session_in_one_call(tiny_model, samples, stats):
    from petq.layers import converter_layer_stats

    assert converter_layer_stats(tiny_model, samples[0], samples[1]) == stats
    with pytest.raises(SpecError, match="int8"):
        converter_layer_stats(tiny_model, samples[0], samples[1], activations="int16")


@pytest.mark.slow
def test_bad_calibration_or_debug_sets_are_named(tiny_model, samples, session):
    from petq.layers import ConverterDebug

    with pytest.raises(SpecError, match="calibration set is empty"):
        ConverterDebug(tiny_model, [])
    with pytest.raises(SpecError, match="debug set is empty"):
        session.layer_stats([])
    with pytest.raises(SpecError, match="shape"):
        session.layer_stats([np.zeros((1, 16, 16, 3), np.float32)])


# ------------------------------------------------------------------ AI Edge Quantizer


@pytest.mark.slow
def test_aeq_layer_stats_match_its_validator(fp32, samples):
    from ai_edge_quantizer import quantizer, recipe

    from petq.aeq import aeq_layer_stats, aeq_quantize, aeq_signature
    from petq.layers import quantized_ops
    from petq.runtime import captured_output

    calibration, debug = samples
    stats = aeq_layer_stats(fp32, "static_wi8_ai8", calibration, debug)
    model = aeq_quantize(fp32, recipe.static_wi8_ai8(), calibration)
    assert [(s.op, s.name) for s in stats] == quantized_ops(model) == integer_ops(model)
    assert [s.op for s in stats] == TINY_INT8_OPS
    assert all(math.isfinite(s.error) and s.error >= 0 for s in stats)
    signature, name = aeq_signature(fp32)
    with captured_output():
        qt = quantizer.Quantizer(bytearray(fp32), previous_quantized_model=bytearray(model))
        mse = qt.validate({signature: [{name: x} for x in debug]}).get_all_tensor_results()
    for s in stats:
        assert s.rmse ** 2 == pytest.approx(mse[s.name]["mse"], rel=1e-3)


@pytest.mark.slow
def test_aeq_selective_keeps_the_worst_layers_in_float(fp32, samples):
    from petq.aeq import aeq_layer_stats, aeq_quantize

    calibration, debug = samples
    names = worst_layers(aeq_layer_stats(fp32, "static_wi8_ai8", calibration, debug), 2)
    model = aeq_quantize(fp32, "static_wi8_ai8", calibration, keep_float=names)
    left = integer_ops(model)
    assert len(left) == len(integer_ops(aeq_quantize(fp32, "static_wi8_ai8", calibration))) - 2
    assert not {name for _, name in left} & set(names)
    _, scores = run_model(model, debug)
    assert np.isfinite(scores).all()
    with pytest.raises(SpecError, match="no layer named"):
        aeq_quantize(fp32, "static_wi8_ai8", calibration, keep_float=["nope"])
    with pytest.raises(SpecError, match="no recipe named"):
        aeq_quantize(fp32, "static_wi9_ai9", calibration)


@pytest.mark.slow
def test_float_activations_have_errors_but_no_scale(fp32, samples):
    from petq.aeq import aeq_layer_stats
    from petq.layers import model_layer_stats

    dynamic = aeq_layer_stats(fp32, "dynamic_wi8_afp32", None, samples[1])
    assert [s.op for s in dynamic] == TINY_INT8_OPS
    assert all(s.error is None and s.scale is None and s.range_used is None for s in dynamic)
    assert all(s.rmse > 0 and math.isfinite(s.rmse) for s in dynamic)
    same = model_layer_stats(fp32, fp32, samples[1])
    assert len(same) == len(TINY_INT8_OPS) and all(s.rmse == 0.0 for s in same)
    with pytest.raises(SpecError):
        worst_layers(same, 1)
