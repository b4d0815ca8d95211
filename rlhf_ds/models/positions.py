"""Position ids and last-token indices from attention masks (pure torch)."""
import torch


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """`(B, T)` position ids that start at 0 on each row's first real token.

    Needed for left-padded rows: without them a model numbers pads as positions and the
    first prompt token of a short prompt sits at position P - len instead of 0, so scores
    and log-probs would differ from those of the same text unpadded.
    """
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """`(B,)` index of each row's last real token (mask 1), for any padding side.

    The reward is read here, never at a pad position and never by searching for the pad id
    (pad may equal EOS in some tokenizers, and a response may end in EOS).
    """
    t = attention_mask.shape[-1]
    flipped_first = attention_mask.flip(-1).long().argmax(-1)
    idx = t - 1 - flipped_first
    if (attention_mask.sum(-1) == 0).any():
        raise ValueError("a row of the attention mask is all zeros: an empty sequence cannot be scored")
    return idx
