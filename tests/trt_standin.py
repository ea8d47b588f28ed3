"""A STAND-IN for the TensorRT Python API. It is not TensorRT and builds no engine.

TensorRT cannot be installed on our machines (PyPI has no usable wheel; see
docs/deployment.md), so the tests put this module in ``sys.modules["tensorrt"]`` to run
``samtriton.export.tensorrt_engine.build_engine``'s own logic on CPU: which layers it pins
to FP32, which builder flags it sets, how it treats a timing cache, how its progress
monitor is called. It has only the names build_engine touches, each behaving as the real
API documents it (TensorRT 10.5 / onnx-tensorrt), narrowed to what the tests need:

- ``OnnxParser`` builds the network from a real ONNX file: one layer per ONNX node, typed
  as onnx-tensorrt maps the op (an approximation: the real parser sometimes emits several
  layers per node), tensor dtypes from ONNX shape inference. Like the real parser, it
  refuses a UINT8 tensor that is not a network input or output.
- ``ILayer.precision`` / ``set_output_type`` with a float type on a layer that has an
  integer or bool tensor is recorded as the error TensorRT reports for it, and
  ``build_serialized_network`` then returns None, as TensorRT's does.
- ``IBuilderConfig`` starts with TF32 set, as TensorRT's does.
- A timing cache blob names the GPU model and TensorRT version that wrote it;
  ``set_timing_cache`` returns False for any other (``ignore_mismatch=False``).
- ``build_serialized_network`` calls the progress monitor positionally, as TensorRT does:
  ``phase_start(phase_name, parent_phase, num_steps)``, ``step_complete(phase_name, step)``,
  ``phase_finish(phase_name)``.

The "plan" it returns is JSON describing what was asked for (flags, profile, pinned layers),
for the tests to read.
"""

from __future__ import annotations

import enum
import json

__version__ = "10.5.0.standin"
GPU = "Stand-in GPU"
TIMING_CACHE_MAGIC = b"STAND-IN TIMING CACHE\n"


# Integer enums, as TensorRT's pybind11 enums are.
DataType = enum.IntEnum("DataType", "FLOAT HALF BF16 INT8 INT32 INT64 BOOL UINT8")


float32, float16, bfloat16 = DataType.FLOAT, DataType.HALF, DataType.BF16
int32, int64, uint8 = DataType.INT32, DataType.INT64, DataType.UINT8
FLOATS = (DataType.FLOAT, DataType.HALF, DataType.BF16)

LayerType = enum.IntEnum(
    "LayerType",
    "CONVOLUTION DECONVOLUTION ACTIVATION POOLING SCALE SOFTMAX CONCATENATION "
    "ELEMENTWISE UNARY SHUFFLE REDUCE CONSTANT IDENTITY SLICE SHAPE GATHER "
    "MATRIX_MULTIPLY SELECT FILL CAST NORMALIZATION EINSUM RESIZE",
)
UnaryOperation = enum.IntEnum("UnaryOperation", "EXP LOG SQRT RECIP ABS NEG SIN COS ERF NOT FLOOR CEIL")
ElementWiseOperation = enum.IntEnum(
    "ElementWiseOperation", "SUM PROD MAX MIN SUB DIV POW FLOOR_DIV AND OR EQUAL GREATER LESS"
)
BuilderFlag = enum.IntEnum("BuilderFlag", "FP16 BF16 INT8 TF32 OBEY_PRECISION_CONSTRAINTS PREFER_PRECISION_CONSTRAINTS")
MemoryPoolType = enum.IntEnum("MemoryPoolType", "WORKSPACE")
NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH STRONGLY_TYPED")

# ONNX op -> (layer type, operation), after onnx-tensorrt's importers.
_ELEMENTWISE = {
    "Add": "SUM",
    "Sub": "SUB",
    "Mul": "PROD",
    "Div": "DIV",
    "Pow": "POW",
    "Max": "MAX",
    "Min": "MIN",
    "Mod": "FLOOR_DIV",
    "And": "AND",
    "Or": "OR",
    "Equal": "EQUAL",
    "Greater": "GREATER",
    "Less": "LESS",
}
_UNARY = {
    "Exp": "EXP",
    "Log": "LOG",
    "Sqrt": "SQRT",
    "Reciprocal": "RECIP",
    "Abs": "ABS",
    "Neg": "NEG",
    "Sin": "SIN",
    "Cos": "COS",
    "Erf": "ERF",
    "Not": "NOT",
    "Floor": "FLOOR",
    "Ceil": "CEIL",
}
_OTHER = {
    "Conv": "CONVOLUTION",
    "ConvTranspose": "DECONVOLUTION",
    "Relu": "ACTIVATION",
    "Sigmoid": "ACTIVATION",
    "Tanh": "ACTIVATION",
    "BatchNormalization": "SCALE",
    "Softmax": "SOFTMAX",
    "Concat": "CONCATENATION",
    "Reshape": "SHUFFLE",
    "Transpose": "SHUFFLE",
    "Squeeze": "SHUFFLE",
    "Unsqueeze": "SHUFFLE",
    "Flatten": "SHUFFLE",
    "ReduceMean": "REDUCE",
    "ReduceSum": "REDUCE",
    "ReduceMax": "REDUCE",
    "Constant": "CONSTANT",
    "Identity": "IDENTITY",
    "Slice": "SLICE",
    "Split": "SLICE",
    "Pad": "SLICE",
    "Expand": "SLICE",
    "Tile": "SLICE",
    "Shape": "SHAPE",
    "Gather": "GATHER",
    "MatMul": "MATRIX_MULTIPLY",
    "Gemm": "MATRIX_MULTIPLY",
    "Where": "SELECT",
    "Range": "FILL",
    "ConstantOfShape": "FILL",
    "Cast": "CAST",
    "LayerNormalization": "NORMALIZATION",
    "Einsum": "EINSUM",
    "Resize": "RESIZE",
    "AveragePool": "POOLING",
    "MaxPool": "POOLING",
}


class Logger:
    VERBOSE, INFO, WARNING, ERROR = range(4)

    def __init__(self, severity=WARNING):
        self.severity = severity


class ITensor:
    def __init__(self, name: str, dtype: DataType):
        self.name, self.dtype = name, dtype


class ILayer:
    """The base layer: like TensorRT's, it has no ``op`` until cast to its subclass."""

    def __init__(self, name, type, inputs, outputs, op=None):
        self.name, self.type, self._op = name, type, op
        self._inputs, self._outputs = inputs, outputs
        self._precision = None
        self._output_types = {}
        self.errors = []

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, index):
        return self._inputs[index]

    def get_output(self, index):
        return self._outputs[index]

    def _integer_tensors(self):
        return [t for t in self._inputs + self._outputs if t is not None and t.dtype not in FLOATS]

    @property
    def precision(self):
        return self._precision or DataType.FLOAT

    @precision.setter
    def precision(self, dtype):
        self._precision = dtype
        if dtype in FLOATS and self._integer_tensors():
            self.errors.append(
                f"{self.name}: layer precision {dtype.name} on a layer with "
                f"{self._integer_tensors()[0].dtype.name} tensors"
            )

    @property
    def precision_is_set(self):
        return self._precision is not None

    def set_output_type(self, index, dtype):
        self._output_types[index] = dtype
        if dtype in FLOATS and self._outputs[index].dtype not in FLOATS:
            self.errors.append(
                f"{self.name}: output type {dtype.name} requested for a "
                f"{self._outputs[index].dtype.name} (shape) tensor"
            )

    def output_type_is_set(self, index):
        return index in self._output_types


class IUnaryLayer(ILayer):
    op = property(lambda self: self._op)


class IElementWiseLayer(ILayer):
    op = property(lambda self: self._op)


class INetworkDefinition:
    def __init__(self, flags):
        self.flags = flags
        self.layers, self.inputs, self.outputs = [], [], []

    num_layers = property(lambda self: len(self.layers))
    num_inputs = property(lambda self: len(self.inputs))

    def get_layer(self, index):
        return self.layers[index]

    def get_input(self, index):
        return self.inputs[index]


_ONNX_TO_DTYPE = {
    1: DataType.FLOAT,
    10: DataType.HALF,
    16: DataType.BF16,
    3: DataType.INT8,
    6: DataType.INT32,
    7: DataType.INT64,
    9: DataType.BOOL,
    2: DataType.UINT8,
    11: DataType.FLOAT,
}  # double -> float


class OnnxParser:
    def __init__(self, network, logger):
        self.network, self.errors = network, []

    num_errors = property(lambda self: len(self.errors))

    def get_error(self, index):
        return self.errors[index]

    def parse_from_file(self, path) -> bool:
        import onnx

        model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
        graph = model.graph
        types = {
            v.name: v.type.tensor_type.elem_type
            for v in list(graph.input) + list(graph.output) + list(graph.value_info)
        }
        types.update({t.name: t.data_type for t in graph.initializer})
        tensors = {}

        def tensor(name):
            if not name:
                return None
            if name not in tensors:
                tensors[name] = ITensor(name, _ONNX_TO_DTYPE[types[name]])
            return tensors[name]

        self.network.inputs = [tensor(v.name) for v in graph.input]
        self.network.outputs = [tensor(v.name) for v in graph.output]
        boundary = {v.name for v in list(graph.input) + list(graph.output)}
        for index, node in enumerate(graph.node):
            name = node.name or f"{node.op_type}_{index}"
            if node.op_type in _ELEMENTWISE:
                kind, op, cls = LayerType.ELEMENTWISE, ElementWiseOperation[_ELEMENTWISE[node.op_type]], ILayer
            elif node.op_type in _UNARY:
                kind, op, cls = LayerType.UNARY, UnaryOperation[_UNARY[node.op_type]], ILayer
            elif node.op_type in _OTHER:
                kind, op, cls = LayerType[_OTHER[node.op_type]], None, ILayer
            else:
                self.errors.append(f"{name}: No importer registered for op: {node.op_type}")
                return False
            outputs = [tensor(o) for o in node.output]
            for out in outputs:
                # onnx-tensorrt (ModelImporter.cpp): UINT8 only as a network input or output.
                if out is not None and out.dtype == DataType.UINT8 and out.name not in boundary:
                    self.errors.append(
                        f"{name} ({node.op_type}): UINT8 tensor {out.name!r} is not a network "
                        "input or output; TensorRT supports UINT8 only there"
                    )
                    return False
            self.network.layers.append(cls(name, kind, [tensor(i) for i in node.input], outputs, op))
        return True


class IOptimizationProfile:
    def __init__(self):
        self.shapes, self.errors = {}, []

    def set_shape(self, name, min, opt, max):
        if not all(a <= b <= c for a, b, c in zip(min, opt, max)):
            self.errors.append(f"{name}: profile dims must satisfy min <= opt <= max, got {min}/{opt}/{max}")
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class ITimingCache:
    def __init__(self, gpu, version, entries=0):
        self.gpu, self.version, self.entries = gpu, version, entries

    def serialize(self) -> bytes:
        return (
            TIMING_CACHE_MAGIC
            + json.dumps({"gpu": self.gpu, "version": self.version, "entries": self.entries}).encode()
        )


def timing_cache_blob(gpu=GPU, version=__version__, entries=3) -> bytes:
    """A serialized cache as the given GPU model / TensorRT version would write it."""
    return ITimingCache(gpu, version, entries).serialize()


class IProgressMonitor:
    def __init__(self):
        pass


class IBuilderConfig:
    def __init__(self):
        self.flags = {BuilderFlag.TF32}  # TensorRT's default
        self.pools, self.profiles = {}, []
        self._timing_cache = None
        self.progress_monitor = None

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def get_flag(self, flag) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob):
        if not blob:
            return ITimingCache(GPU, __version__)
        if not bytes(blob).startswith(TIMING_CACHE_MAGIC):
            return None  # a blob TensorRT cannot read
        fields = json.loads(bytes(blob)[len(TIMING_CACHE_MAGIC) :])
        return ITimingCache(fields["gpu"], fields["version"], fields["entries"])

    def set_timing_cache(self, cache, ignore_mismatch) -> bool:
        if (cache.gpu, cache.version) != (GPU, __version__) and not ignore_mismatch:
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self):
        return self._timing_cache


class Builder:
    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags=0):
        return INetworkDefinition(flags)

    def create_builder_config(self):
        return IBuilderConfig()

    def create_optimization_profile(self):
        return IOptimizationProfile()

    def build_serialized_network(self, network, config):
        monitor = config.progress_monitor
        if monitor is not None:
            monitor.phase_start("Building engine", None, 2)
            monitor.phase_start("Tactic selection", "Building engine", network.num_layers)
            monitor.step_complete("Tactic selection", 0)
            monitor.phase_finish("Tactic selection")
            monitor.step_complete("Building engine", 1)
            monitor.phase_finish("Building engine")
        errors = [e for layer in network.layers for e in layer.errors]
        errors += [e for profile in config.profiles for e in profile.errors]
        inputs = {t.name for t in network.inputs}
        errors += [
            f"profile names {name!r}, which is not a network input"
            for profile in config.profiles
            for name in profile.shapes
            if name not in inputs
        ]
        if not config.profiles:
            errors.append("a network with dynamic shapes needs an optimization profile")
        if errors:
            self.errors = errors
            return None
        if config._timing_cache is not None:
            config._timing_cache.entries += 1
        pinned = [
            {
                "name": layer.name,
                "type": layer.type.name,
                "op": layer._op.name if layer._op else None,
                "dtypes": [t.dtype.name for t in layer._inputs + layer._outputs if t is not None],
            }
            for layer in network.layers
            if layer.precision_is_set
        ]
        summary = {
            "standin": True,
            "flags": sorted(f.name for f in config.flags),
            "num_layers": network.num_layers,
            "profiles": [{k: list(map(list, v)) for k, v in p.shapes.items()} for p in config.profiles],
            "pinned": pinned,
        }
        return json.dumps(summary).encode()
