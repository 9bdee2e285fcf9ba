"""vLLM plugin: one ``generate`` call may carry LLaVA / LLaVA-NeXT image embeddings of different lengths.

Registered under the entry point group ``vllm.general_plugins`` (see setup.py), so installing this
package is all it takes: vLLM calls :func:`register` in every process it starts (the front end, the
engine core and each worker), before it builds the model.

Why it is needed (vLLM 0.32): a request's image embeddings reach the model as
``LlavaImageEmbeddingInputs(data=...)`` (``LlavaNextImageEmbeddingInputs`` for LLaVA-NeXT), a
``TensorSchema`` whose ``data`` is declared ``TensorShape("bn", "ifs", "hs")`` with no dynamic
dimension. When one engine step batches images whose embeddings have different lengths, ``data`` is a
list of [k_i, hs] tensors, the schema check raises "data contains inconsistent shapes" in the worker,
and the engine dies (the client sees ``EngineDeadError``). The models themselves already take the
list (``_process_image_input`` returns it as it is, one tensor per image). Pruned embeddings have a
different length per image by design, so the plugin declares ``ifs`` (the image feature size) dynamic
in those two schemas, exactly as vLLM declares the number of tiles ``np`` dynamic in
``LlavaNextImagePixelInputs``. Nothing else changes: the rank, the batch and hidden sizes are still
checked, and pixel inputs are untouched.

If a vLLM version already declares ``ifs`` dynamic, or declares the field differently, the plugin
leaves that schema as it is (and logs why at debug level).
"""

from __future__ import annotations

import importlib
import logging
import typing

__all__ = ["register", "RAGGED_EMBEDDING_SCHEMAS"]

logger = logging.getLogger(__name__)

# (module, class) of the image-embedding schemas whose feature dimension becomes dynamic.
RAGGED_EMBEDDING_SCHEMAS = (
    ("vllm.model_executor.models.llava", "LlavaImageEmbeddingInputs"),
    ("vllm.model_executor.models.llava_next", "LlavaNextImageEmbeddingInputs"),
)
_FIELD = "data"
_DIMS = ("bn", "ifs", "hs")
_DYNAMIC = "ifs"


def register() -> None:
    """Declares the image feature size of the LLaVA / LLaVA-NeXT embedding schemas dynamic.

    Idempotent: vLLM may call it more than once per process.
    """
    from vllm.utils.tensor_schema import TensorShape

    for module_name, class_name in RAGGED_EMBEDDING_SCHEMAS:
        schema = getattr(importlib.import_module(module_name), class_name)
        hint = typing.get_type_hints(schema, include_extras=True).get(_FIELD)
        shapes = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, TensorShape)]
        if len(shapes) != 1 or tuple(shapes[0].dims) != _DIMS:
            logger.debug("eadaprune: %s.%s is not declared %s; left unchanged", class_name, _FIELD, _DIMS)
            continue
        shape = shapes[0]
        if _DYNAMIC in shape.dynamic_dims:
            continue
        ragged = TensorShape(*shape.dims, dynamic_dims=set(shape.dynamic_dims) | {_DYNAMIC})
        metadata = tuple(ragged if m is shape else m for m in hint.__metadata__)
        # TensorSchema.validate() reads the class annotations on every call.
        schema.__annotations__[_FIELD] = typing.Annotated[(hint.__origin__, *metadata)]
        logger.debug("eadaprune: %s.%s declared %s", class_name, _FIELD, ragged)
