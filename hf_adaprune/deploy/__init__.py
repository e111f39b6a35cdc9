"""From a pruned model to a deployed one: smaller vocabulary, int8, ONNX, CTranslate2.

Optional packages (onnx, onnxruntime, torchao, ctranslate2) are imported by the
functions that need them, never here, so ``import hf_adaprune`` does not need them.
"""

from .ctranslate2 import CTranslate2Export, export_ctranslate2
from .onnx import OnnxSeq2Seq, export_onnx, onnx_session, quantize_onnx
from .quantize import load_int8, quantize_int8, save_int8
from .vocabulary import prune_vocabulary, slice_vocabulary, token_ids_in

__all__ = ["CTranslate2Export", "export_ctranslate2", "OnnxSeq2Seq", "export_onnx", "onnx_session", "quantize_onnx", "load_int8", "quantize_int8", "save_int8", "prune_vocabulary", "slice_vocabulary", "token_ids_in"]
