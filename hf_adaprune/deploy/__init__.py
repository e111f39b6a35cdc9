"""From a pruned model to a deployed one: smaller vocabulary, int8, ONNX, CTranslate2.

Optional packages (onnx, onnxruntime, torchao, ctranslate2) are imported by the
functions that need them, never here, so ``import hf_adaprune`` does not need them.
"""

from .quantize import load_int8, quantize_int8, save_int8
from .vocabulary import prune_vocabulary, slice_vocabulary, token_ids_in

__all__ = ["load_int8", "quantize_int8", "save_int8", "prune_vocabulary", "slice_vocabulary", "token_ids_in"]
