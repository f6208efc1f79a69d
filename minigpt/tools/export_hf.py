"""Export a trained model as a Hugging Face GPT-2 folder (safetensors weights and the tokenizer).

examples:
    minigpt export-hf outputs/cpu-cosine_warmup/<date>_<time> -o exported/my-gpt
    minigpt export-hf RUN_DIR/checkpoints/step_0000600.pt -o exported/my-gpt

`export_gpt2(run_or_checkpoint, out_dir)` writes what `transformers` loads with
`AutoModelForCausalLM.from_pretrained(out_dir)` and `AutoTokenizer.from_pretrained(out_dir)`:
config.json and generation_config.json, the weights as model.safetensors, and the run's
tokenizer as a `PreTrainedTokenizerFast` (tokenizer.json, tokenizer_config.json).

Our GPT is GPT-2's architecture with a few choices GPT-2 leaves open, each written into the
config so that the logits are ours (checked to 1e-5 by tests/test_export_hf.py):
- GELU: ours is the exact (erf) GELU of nn.GELU(); GPT-2's default is the tanh approximation
  ("gelu_new"), so the config names the exact one, `activation_function: "gelu"`.
- Biases: with model.bias=false we have none; GPT-2 always has them, so they are exported as zeros.
- Vocabulary: our embedding is padded to a multiple of 64 rows that no token id reaches; only the
  tokenizer's rows are exported, so the HF model's vocab_size is the tokenizer's and its logits
  (and generate()) never see a padding id.
- Tied input and output embeddings (`tie_word_embeddings`), the attention scale 1/sqrt(head size),
  LayerNorm eps 1e-5 (nn.LayerNorm's), the context (`n_positions` = model.block_size), dropout.
- Linear layers store (out, in) weights; GPT-2's Conv1D stores (in, out): transposed.
GPT-2 cannot express post-LN blocks or QK-layernorm: those are refused in one line. The z-loss
only changes training, so it exports as is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from minigpt.errors import UserError
from minigpt.model import GPTConfig
from minigpt.run.init_from import find_init_checkpoint  # the same lookup as trainer.init_from
from minigpt.tools import parser as tool_parser

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which model.py uses


def check_exportable(config: GPTConfig) -> None:
    """Refuse, in one line, a model GPT-2's layout cannot express."""
    if config.norm_position != "pre":
        raise UserError("export: this model has post-LN blocks (model.norm_position=post); GPT-2 is pre-LN, so "
                        "transformers' GPT-2 cannot run it; only pre-LN models export")
    if config.qk_layernorm:
        raise UserError("export: this model has QK-layernorm (model.qk_layernorm=true), which GPT-2 has no place for; "
                        "only models without it export")


def hf_config(config: GPTConfig, eot_id: int):
    """The transformers GPT2Config of our model (see the module docstring for each choice)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, n_inner=4 * config.n_embd,
        activation_function="gelu",  # exact erf GELU, as nn.GELU(); GPT-2's own is "gelu_new" (tanh)
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        layer_norm_epsilon=LAYER_NORM_EPS, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False, tie_word_embeddings=True,
        bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id,
    )


def gpt2_state_dict(config: GPTConfig, ours: dict) -> dict:
    """Our model's state dict -> GPT2LMHeadModel's (names, Conv1D layout, zero biases, vocabulary rows)."""
    C, V = config.n_embd, config.vocab_size
    t = {k: v.detach().float() for k, v in ours.items()}

    def bias(name: str, size: int):
        return t[name] if name in t else torch.zeros(size)  # model.bias=false: GPT-2 adds zeros

    out = {"transformer.wte.weight": t["transformer.wte.weight"][:V].clone(),  # the padding rows left out
           "transformer.wpe.weight": t["transformer.wpe.weight"]}
    for i in range(config.n_layer):
        ours_, hf = f"transformer.h.{i}.", f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            out[hf + ln + ".weight"] = t[ours_ + ln + ".weight"]
            out[hf + ln + ".bias"] = bias(ours_ + ln + ".bias", C)
        for layer, width in (("attn.c_attn", 3 * C), ("attn.c_proj", C), ("mlp.c_fc", 4 * C), ("mlp.c_proj", C)):
            out[hf + layer + ".weight"] = t[ours_ + layer + ".weight"].t().contiguous()  # Linear (out, in) -> Conv1D (in, out)
            out[hf + layer + ".bias"] = bias(ours_ + layer + ".bias", width)
    out["transformer.ln_f.weight"] = t["transformer.ln_f.weight"]
    out["transformer.ln_f.bias"] = bias("transformer.ln_f.bias", C)
    out["lm_head.weight"] = out["transformer.wte.weight"]  # tied
    return out


def hf_tokenizer(tokenizer_json: str, block_size: int):
    """The run's tokenizer as a transformers PreTrainedTokenizerFast (byte-level BPE, or raw bytes)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from minigpt.data.tokenizer import EOT

    if json.loads(tokenizer_json).get("kind") == "byte":
        backend = _byte_tokenizer()
    else:
        backend = Tokenizer.from_str(tokenizer_json)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   model_max_length=block_size, clean_up_tokenization_spaces=False)


def _byte_tokenizer():
    """minigpt's byte tokenizer (ids 0-255 the UTF-8 bytes, 256 end-of-text) as a `tokenizers`
    byte-level BPE without merges: each byte is its own token, with its own id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from minigpt.data.tokenizer import EOT, byte_chars

    vocab = {char: b for b, char in enumerate(byte_chars())}
    vocab[EOT] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    return tok


def export_state(state: dict, out_dir: Path) -> Path:
    """Write a loaded checkpoint (its model, model_config and tokenizer) as a GPT-2 folder."""
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise UserError("export needs transformers (and safetensors): pip install transformers safetensors "
                        "(or pip install -e '.[hf]')") from None
    config = GPTConfig(**state["model_config"])
    check_exportable(config)
    tokenizer = hf_tokenizer(state["tokenizer"], config.block_size)
    eot_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    model = GPT2LMHeadModel(hf_config(config, eot_id))
    missing, unexpected = model.load_state_dict(gpt2_state_dict(config, state["model"]), strict=False)
    # Only the attention's causal-mask buffers, which GPT-2 builds itself, may be left to it.
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise RuntimeError(f"export: GPT-2 weights not matched: missing {missing}, unexpected {unexpected}")
    model.generation_config.pad_token_id = eot_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def export_gpt2(run_or_checkpoint, out_dir) -> tuple[Path, dict]:
    """Export a checkpoint (a .pt file, or a run folder: its newest intact checkpoint) to `out_dir`,
    a new or empty folder; returns (the checkpoint exported, its state)."""

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"export: '{out_dir}' already exists and is not an empty folder; give a new folder "
                        "(nothing is overwritten)")
    try:
        path, state = find_init_checkpoint(str(run_or_checkpoint))
    except UserError as e:
        raise UserError(str(e).replace("trainer.init_from: ", "export: ", 1)) from None
    if "tokenizer" not in state or "model_config" not in state:
        raise UserError(f"export: {path} holds no tokenizer or model config; export a checkpoint that minigpt saved")
    check_exportable(GPTConfig(**state["model_config"]))
    export_state(state, out_dir)
    return path, state


def main(argv=None, prog=None) -> int:
    parser = tool_parser(__doc__.split("\n\n`export_gpt2")[0], prog)
    parser.add_argument("checkpoint", help="a checkpoint file, or a run directory (its newest intact checkpoint)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="the folder to write (new, or empty)")
    args = parser.parse_args(argv)
    try:
        path, state = export_gpt2(args.checkpoint, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {path} (step {state['step']}) to {args.out}: load it with "
          f"AutoModelForCausalLM.from_pretrained('{args.out}') and AutoTokenizer.from_pretrained('{args.out}')")
    return 0
