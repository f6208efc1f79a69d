"""minigpt/tools/export_hf.py (`minigpt export-hf`): a checkpoint exported as a GPT-2 folder gives our logits in transformers.

The tests that build a transformers model are marked slow: importing transformers' model code
alone takes 5 to 16 s on the 2-core machine (torch.distributed and dynamo come with it)."""

from __future__ import annotations

import pytest
import torch

from minigpt.data.tokenizer import BPETokenizer, ByteTokenizer
from minigpt.errors import UserError
from minigpt.tools.export_hf import export_gpt2
from minigpt.model import GPT, GPTConfig
from minigpt.run.checkpoint import save_checkpoint

transformers = pytest.importorskip("transformers")

TEXT = "def main(argv):\n    total = sum(int(a) for a in argv)\n    print('total', total)\n    return 0\n"


@pytest.fixture(scope="module")
def bpe():
    # A vocabulary of 300: the model pads it to 320, which the export must leave out.
    return BPETokenizer.train(iter([TEXT * 20, "import os\nimport sys\nclass A:\n    pass\n" * 20]), 300)


def checkpoint(path, tokenizer_json: str, vocab_size: int, **model) -> tuple[GPT, object]:
    """A tiny model with weights far from the initialisation (so a mapping error shows in the
    logits), saved as a minigpt checkpoint."""
    config = GPTConfig(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32, **model)
    torch.manual_seed(0)
    gpt = GPT(config)
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    gpt.eval()
    state = {"model": gpt.state_dict(), "step": 7, "model_config": vars(config).copy(), "tokenizer": tokenizer_json,
             "config": {}}
    return gpt, save_checkpoint(state, path / "checkpoints" / "step_0000007.pt")


@pytest.mark.slow
@pytest.mark.parametrize("bias", [False, True])
def test_exported_gpt2_gives_our_logits_and_our_greedy_tokens(bias, bpe, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours, _ = checkpoint(tmp_path / "run", bpe.backend.to_str(), bpe.vocab_size, bias=bias)
    path, state = export_gpt2(tmp_path / "run", tmp_path / "hf")  # a run folder: its newest checkpoint
    assert path.name == "step_0000007.pt" and state["step"] == 7
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert hf.config.vocab_size == 300 and ours.config.padded_vocab_size == 320  # padding rows left out
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied, as ours

    ids = bpe.encode(TEXT)[:32]
    assert tok.encode(TEXT)[:32] == ids and tok.decode(ids) == bpe.decode(ids)
    x = torch.tensor([ids])
    with torch.no_grad():
        want = ours(x)[0][..., :300]
        got = hf(x).logits
    assert want.abs().max() > 3  # logits of a size where a wrong GELU, scale or bias shows
    assert (got - want).abs().max() < 1e-5

    # GPT-2's own tanh GELU would not match: the export's exact "gelu" is what makes it equal.
    tanh = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**hf.config.to_dict(),
                                                                  "activation_function": "gelu_new"})).eval()
    tanh.load_state_dict(hf.state_dict())
    with torch.no_grad():
        assert (tanh(x).logits - want).abs().max() > 1e-4

    prompt = x[:, :4]
    mine = ours.generate(prompt, 10, temperature=0)
    theirs = hf.generate(prompt, max_new_tokens=10, do_sample=False)
    assert theirs.tolist() == mine.tolist()
    assert len(set(mine[0, 4:].tolist())) > 1  # not one token repeated: the comparison says something


@pytest.mark.slow
def test_byte_tokenizer_exports_as_one_token_per_byte(tmp_path):
    from transformers import AutoTokenizer

    byte = ByteTokenizer()
    checkpoint(tmp_path / "run", '{"kind": "byte"}', byte.vocab_size)
    export_gpt2(tmp_path / "run" / "checkpoints" / "step_0000007.pt", tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "héllo <wörld>\n\t"
    assert tok.encode(text) == byte.encode(text)
    assert tok.decode(byte.encode(text)) == text
    assert tok.eos_token_id == byte.eot_id


@pytest.mark.parametrize("model, says", [({"norm_position": "post"}, "post-LN"),
                                         ({"qk_layernorm": True}, "QK-layernorm")])
def test_what_gpt2_cannot_express_is_refused_in_one_line(model, says, bpe, tmp_path):
    checkpoint(tmp_path / "run", bpe.backend.to_str(), bpe.vocab_size, **model)
    with pytest.raises(UserError, match=says) as e:
        export_gpt2(tmp_path / "run", tmp_path / "hf")
    assert "\n" not in str(e.value) and not (tmp_path / "hf").exists()


def test_export_refuses_a_folder_that_holds_files_and_a_run_without_checkpoints(bpe, tmp_path):
    checkpoint(tmp_path / "run", bpe.backend.to_str(), bpe.vocab_size)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty folder"):
        export_gpt2(tmp_path / "run", tmp_path / "hf")
    assert (tmp_path / "hf" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(UserError, match="export: the run folder .* holds no checkpoint"):
        export_gpt2(tmp_path / "empty_run", tmp_path / "hf2")
