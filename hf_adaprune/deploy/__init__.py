"""From a pruned model to a deployed one: smaller vocabulary, int8, ONNX, CTranslate2.

Optional packages (onnx, onnxruntime, torchao, ctranslate2) are imported by the
functions that need them, never here, so ``import hf_adaprune`` does not need them.
"""

from .ctranslate2 import CTranslate2Export, check_ctranslate2_request, export_ctranslate2
from .factored_embedding import check_factoring_request, factor_embeddings
from .onnx import OnnxEncoder, OnnxSeq2Seq, check_onnx_request, export_onnx, onnx_session
from .onnx_int8 import quantize_onnx
from .positions import check_positions_request, prune_positions
from .quantize import check_int8_request, load_int8, quantize_int8, save_int8
from .vocabulary import check_vocabulary_request, prune_vocabulary, slice_vocabulary, token_ids_in

__all__ = [
    "CTranslate2Export", "OnnxEncoder", "OnnxSeq2Seq", "check_ctranslate2_request", "check_factoring_request",
    "check_int8_request", "check_onnx_request", "check_positions_request", "check_vocabulary_request",
    "export_ctranslate2", "export_onnx", "factor_embeddings", "load_int8", "onnx_session", "prune_positions",
    "prune_vocabulary", "quantize_int8", "quantize_onnx", "save_int8", "slice_vocabulary", "token_ids_in",
]
