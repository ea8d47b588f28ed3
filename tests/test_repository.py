"""Generated repositories: every config.pbtxt parses with Triton's ModelConfig schema and
agrees with the contract, for every backend variant."""

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from samtriton import contract as C
from samtriton.export.repository import RepositoryOptions, parse_config, write_repository

VARIANTS = [("python", "python"), ("onnxruntime", "onnxruntime"), ("tensorrt", "onnxruntime"), ("tensorrt", "python")]


@pytest.fixture(scope="module", params=VARIANTS, ids=["+".join(v) for v in VARIANTS])
def written(request, onnx_files, tmp_path_factory):
    encoder_backend, decoder_backend = request.param
    repo = tmp_path_factory.mktemp("repo")
    options = RepositoryOptions(name="seg", encoder_backend=encoder_backend, decoder_backend=decoder_backend)
    write_repository(repo, *onnx_files, options)
    return repo, options


def _dims(tensors):
    return {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in tensors}


def _expected(specs):
    return {s.name: (s.config_dtype, list(s.dims)) for s in specs}


def test_configs_parse_and_match_contract(written):
    repo, options = written
    for spec in C.MODEL_SPECS:
        name = spec.served_name(options.name)
        config = parse_config((repo / name / "config.pbtxt").read_text())
        assert config.name == name
        assert _dims(config.input) == _expected(spec.inputs)
        assert _dims(config.output) == _expected(spec.outputs)
        assert (config.max_batch_size > 0) == spec.batching
        assert (repo / name / "1").is_dir()


def test_backends_and_files(written):
    repo, options = written
    encoder = parse_config((repo / "seg_encoder" / "config.pbtxt").read_text())
    decoder = parse_config((repo / "seg_decoder" / "config.pbtxt").read_text())
    expected_platform = {"python": "", "onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
    assert encoder.platform == expected_platform[options.encoder_backend]
    assert decoder.platform == expected_platform[options.decoder_backend]
    assert (encoder.backend == "python") == (options.encoder_backend == "python")
    gpu = mc.ModelInstanceGroup.KIND_GPU
    assert (encoder.instance_group[0].kind == gpu) == (options.encoder_backend != "python")
    assert encoder.dynamic_batching.max_queue_delay_microseconds > 0
    assert max(encoder.dynamic_batching.preferred_batch_size) <= encoder.max_batch_size
    if options.encoder_backend == "tensorrt":
        assert (repo / "seg_encoder" / "encoder.onnx").exists()
        assert encoder.default_model_filename == "model.plan" and encoder.optimization.cuda.graphs
    else:
        assert (repo / "seg_encoder" / "1" / "model.onnx").exists()
    assert (repo / "seg_encoder" / "1" / "model.py").exists() == (options.encoder_backend == "python")
    # The AMG decoder graph goes where the stages run the decoder in their stubs (CPU).
    assert (repo / "seg_decoder" / "1" / C.AMG_DECODER_FILE).exists() == (options.decoder_backend == "python")
    assert (repo / "seg_decoder" / "1" / "model.py").exists() == (options.decoder_backend == "python")


def test_ensemble_wiring_is_consistent(written):
    repo, options = written
    ensemble = parse_config((repo / "seg" / "config.pbtxt").read_text())
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 0
    produced = {t.name for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        member = parse_config((repo / step.model_name / "config.pbtxt").read_text())
        member_inputs = {t.name: t for t in member.input}
        assert set(step.input_map) == set(member_inputs)
        assert set(step.input_map.values()) <= produced, "every step input is produced earlier"
        assert set(step.output_map) == {t.name for t in member.output}
        produced |= set(step.output_map.values())
        # A batching member called by a non-batching ensemble sees the batch axis explicitly.
        for key, value in step.input_map.items():
            outer = next((t for t in ensemble.input if t.name == value), None)
            if outer is not None:
                inner = list(member_inputs[key].dims)
                expected = ([1] + inner) if member.max_batch_size > 0 else inner
                assert list(outer.dims) == expected
    assert {t.name for t in ensemble.output} <= produced


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="encoder_backend"):
        RepositoryOptions(encoder_backend="jax")
    with pytest.raises(ValueError, match="name"):
        RepositoryOptions(name="a b")


def test_session_model(written):
    repo, options = written
    session = parse_config((repo / "seg_session" / "config.pbtxt").read_text())
    assert session.backend == "python" and (repo / "seg_session" / "1" / "model.py").exists()
    assert session.instance_group[0].count == options.session_instances >= 2, "a click is not queued behind an encode"
    optional = {t.name for t in session.input if t.optional}
    assert optional == {s.name for s in C.SESSION.inputs if s.optional} and "image_id" not in optional
    assert session.parameters["session_cache_mib"].string_value == str(options.session_cache_mib)
    # The python decoder runs inside the session stub; any other decoder backend is reached through BLS.
    for stage in ("seg_session", "seg_amg"):
        config = parse_config((repo / stage / "config.pbtxt").read_text())
        in_process = config.parameters["decoder_in_process"].string_value == "true"
        assert in_process == (options.decoder_backend == "python"), stage


def test_session_cache_must_hold_an_embedding():
    with pytest.raises(ValueError, match="session_cache_mib"):
        RepositoryOptions(session_cache_mib=1)


def test_amg_filter_model_beside_a_gpu_decoder(written):
    """With a GPU decoder the AMG filter graph is its own onnxruntime model on the GPU and the
    python stages are told to call it; with the python decoder they filter in their stubs."""
    import onnx

    repo, options = written
    name = C.AMG_FILTER.served_name(options.name)
    stages = [
        parse_config((repo / spec.served_name(options.name) / "config.pbtxt").read_text())
        for spec in (C.AMG, C.SESSION)
    ]
    # Its working memory: the CPU stub's, or larger chunks (fewer calls) for the GPU graph.
    budget = C.DEFAULT_AMG_FILTER_MIB if options.decoder_backend == "python" else C.DEFAULT_AMG_FILTER_MIB_GPU
    assert all(stage.parameters["amg_filter_mib"].string_value == str(budget) for stage in stages)
    if options.decoder_backend == "python":
        assert not (repo / name).exists()
        assert all("amg_filter_model" not in stage.parameters for stage in stages)
        return
    config = parse_config((repo / name / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx" and config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert _dims(config.input) == _expected(C.AMG_FILTER.inputs)
    assert _dims(config.output) == _expected(C.AMG_FILTER.outputs)
    graph = onnx.load(str(repo / name / "1" / "model.onnx"))
    assert [i.name for i in graph.graph.input] == [s.name for s in C.AMG_FILTER.inputs]
    assert [o.name for o in graph.graph.output] == [s.name for s in C.AMG_FILTER.outputs]
    assert all(stage.parameters["amg_filter_model"].string_value == name for stage in stages)
