"""T5-family backbones (T5, T5 1.1 LM-adapted, Flan-T5): frozen encoder-decoder, text-to-text.

Prompt placement:
* soft tokens go before the input embeddings (Lester et al. 2021); the encoder mask covers them and
  the decoder's cross-attention sees them.
* deep prompts reach the self-attention of **both** stacks through ptune's registered attention
  function (ptune/backbones/attention.py): each encoder and decoder self-attention module is mapped to
  its layer's prefix; cross-attention is left alone. T5's encoder stack drops any cache on purpose
  (``T5Stack.forward``), which is why PEFT's prefix tuning on T5 only reaches the decoder; the
  attention registry reaches it without a cache or a module hook. The prefix sits to the left of the
  input for T5's relative position bias (queries at positions P.., prefix keys at 0..P-1, as a past of
  length P gives), and the attention mask gains attended prefix columns, padding staying masked.

Scoring is rank classification: the encoder runs once, then one batched decoder pass scores every
candidate (sum of token log-likelihoods, EOS included) and the best-scoring candidate wins. Training
uses the usual teacher-forced cross-entropy on the gold candidate's tokens.

Where T5's own evaluation generates free text (STS-B's score string, ReCoRD's entity),
ptune ranks the task's closed candidate set instead (STS-B's 26 score buckets, the passage's
entities; WSC uses the True/False format of wsc.fixed): exact decoding restricted to valid outputs,
with no invalid predictions and one decoder pass. Every GLUE / SuperGLUE task has such a set, so none needs
free generation; an open-ended task will add a generation path here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptune.backbones import attention
from ptune.backbones.base import Backbone, Output, pad_cat
from ptune.methods.base import BackboneDims, Prompt
from ptune.tasks.collate import IGNORE


class T5Backbone(Backbone):
    family = "t5"

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.freeze()
        self.self_attention = {
            stack: [block.layer[0].SelfAttention for block in getattr(model, stack).block]
            for stack in ("encoder", "decoder")
        }

    def dims(self) -> BackboneDims:
        c = self.model.config
        return BackboneDims(
            hidden_size=c.d_model,
            num_layers=c.num_layers,
            num_heads=c.num_heads,
            head_dim=c.d_kv,
            decoder_layers=c.num_decoder_layers,
            word_embeddings=self.model.get_input_embeddings().weight,
            tokenize=lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"],
            # SentencePiece ids are in frequency order; skip <pad>, </s>, <unk>
            common_token_ids=torch.arange(3, min(5003, c.vocab_size)),
        )

    def prefixes(self, stack: str, kv: list[tuple[Tensor, Tensor]] | None):
        """Within the block, ``stack``'s self-attention layers attend to their prefix keys/values."""
        modules = self.self_attention[stack]
        bias = attention.StackBias(modules[0])
        return attention.prefixes(
            {m: attention.LayerPrefix(k, v, bias) for m, (k, v) in zip(modules, kv or [], strict=True)}
            if kv else {}
        )

    # --- forward ---------------------------------------------------------------------------------
    def encode(self, batch: dict, prompt: Prompt) -> tuple[Tensor, Tensor]:
        emb = self.model.get_input_embeddings()(batch["input_ids"])
        emb, mask = self.place_embeds(emb, batch["attention_mask"], prompt, at=0)
        with self.prefixes("encoder", prompt.keys_values):
            hidden = self.model.encoder(inputs_embeds=emb, attention_mask=mask).last_hidden_state
        return hidden, mask

    def decode(self, enc: Tensor, enc_mask: Tensor, targets: Tensor, prompt: Prompt, rows: int) -> Tensor:
        """Logits for teacher-forced ``targets`` (N, T); encoder rows are repeated to N = rows * k."""
        rep = len(targets) // rows
        if rep > 1:
            enc, enc_mask = enc.repeat_interleave(rep, 0), enc_mask.repeat_interleave(rep, 0)
        dec_in = shift_right(targets, self.model.config)
        with self.prefixes("decoder", prompt.decoder_keys_values):  # rows repeat the prefix as needed
            out = self.model.decoder(
                input_ids=dec_in, encoder_hidden_states=enc, encoder_attention_mask=enc_mask, use_cache=False
            ).last_hidden_state
        if self.model.config.scale_decoder_outputs:
            out = out * (self.model.config.d_model**-0.5)
        return self.model.lm_head(out).float()

    def forward(self, batch: dict, prompt: Prompt, *, score: bool = True) -> Output:
        enc, mask = self.encode(batch, prompt)
        b = len(enc)
        loss = None
        if "labels" in batch:  # (B, T) gold candidate tokens, -100 padded
            logits = self.decode(enc, mask, batch["labels"], prompt, b)
            loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        scores = torch.empty(b, 0)
        if score:
            cands = batch["cand_ids"]  # (B, C, T), -100 padded
            c = cands.shape[1]
            logits = self.decode(enc, mask, cands.flatten(0, 1), prompt, b)
            scores = sequence_logprob(logits, cands.flatten(0, 1)).view(b, c)
            scores = scores.masked_fill(~batch["choice_mask"], float("-inf"))
        return Output(loss, scores)

    def forward_many(self, batches: list[dict], prompt: Prompt) -> list[Tensor]:
        """One pass over several one-task batches: inputs padded to the longest, candidates to the most and
        longest (padding candidates score -inf, padding tokens are ignored); each batch's scores cut back to
        its own candidates."""
        merged = {"input_ids": pad_cat([b["input_ids"] for b in batches], self.tokenizer.pad_token_id),
                  "attention_mask": pad_cat([b["attention_mask"] for b in batches], 0),
                  "cand_ids": pad_cat([b["cand_ids"] for b in batches], IGNORE),
                  "choice_mask": pad_cat([b["choice_mask"] for b in batches], False)}
        scores = self.forward(merged, prompt).scores
        out, at = [], 0
        for b in batches:
            n, c = b["cand_ids"].shape[:2]
            out.append(scores[at : at + n, :c])
            at += n
        return out


def shift_right(targets: Tensor, config) -> Tensor:
    """Teacher-forcing decoder inputs: the start token, then the targets less the last (padding for < 0)."""
    start = targets.new_full((len(targets), 1), config.decoder_start_token_id)
    return torch.cat([start, targets[:, :-1].masked_fill(targets[:, :-1] < 0, config.pad_token_id)], dim=1)


def sequence_logprob(logits: Tensor, targets: Tensor) -> Tensor:
    """Sum over positions of log p(target token); positions with target < 0 are ignored."""
    logp = logits.log_softmax(-1)
    valid = targets >= 0
    tok = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (tok * valid).sum(-1)
