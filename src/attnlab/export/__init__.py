"""Export to other runtimes: ONNX files checked in onnxruntime (the ``export`` extra);
:func:`export_onnx` is also ``attnlab.export_onnx``.

Example:
    >>> import os, tempfile, torch, attnlab
    >>> model = attnlab.create_model("resnet20", attn="eca", num_classes=3)
    >>> from attnlab.export import check_onnx, export_onnx
    >>> path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    >>> path = export_onnx(model, (1, 3, 32, 32), path, dynamic=True)
    >>> check_onnx(model, path, torch.randn(2, 3, 40, 24)) < 1e-4
    True
"""

from .onnx import (
    DEFAULT_OPSET,
    DYNAMO_MIN_OPSET,
    POOLING_OPS,
    ExportError,
    check_onnx,
    export_mode,
    export_onnx,
    onnx_op_types,
    run_onnx,
)

__all__ = [
    "DEFAULT_OPSET",
    "DYNAMO_MIN_OPSET",
    "POOLING_OPS",
    "ExportError",
    "check_onnx",
    "export_mode",
    "export_onnx",
    "onnx_op_types",
    "run_onnx",
]
