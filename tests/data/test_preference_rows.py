"""The rows of offline preference training: rankings expanded to ordered pairs, KTO's mismatched
completions fixed by record order, and batches that carry their rows' precomputed reference log-probs."""
import torch

from rlhf_ds.data import Message, RankingRecord, UnpairedRecord
from rlhf_ds.trainers.preference_data import ResponsesDataset, kl_rows, ranking_pairs


def _m(role, text):
    return [Message(role, text)]


def test_a_ranking_gives_every_ordered_pair_and_ties_give_none():
    prompt = _m("user", "pick")
    a, b, c, d = (_m("assistant", x) for x in "abcd")
    pairs = ranking_pairs([RankingRecord(prompt, [a, b, c, d], [0, 1, 1, 2], 0.5),
                           RankingRecord(prompt, [c, a], [0, 1])])
    got = [(p.responses[0][0].content, p.responses[1][0].content) for p in pairs]
    assert got == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"), ("c", "d"), ("c", "a")]
    assert all(p.ranks == [0, 1] for p in pairs) and pairs[0].margin == 0.5


def test_kto_rows_pair_each_prompt_with_the_next_records_completion():
    recs = [UnpairedRecord(_m("user", f"q{i}"), _m("assistant", f"r{i}"), i % 2 == 0) for i in range(3)]
    rows = kl_rows(recs)
    assert [(r.prompt[0].content, r.responses[0][0].content, r.responses[1][0].content) for r in rows] == \
        [("q0", "r0", "r1"), ("q1", "r1", "r2"), ("q2", "r2", "r0")]


def test_batches_carry_their_rows_and_reference_log_probs(padded_plain_tokenizer):
    recs = [UnpairedRecord(_m("user", f"what is {w}"), _m("assistant", f"the {w} is good"), i != 1)
            for i, w in enumerate(["sun", "moon", "star"])]
    ds = ResponsesDataset(kl_rows(recs), padded_plain_tokenizer, None, None, k=2,
                          desirable=[r.desirable for r in recs])
    ds.ref = torch.tensor([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]], dtype=torch.float64)
    batch = ds.collate([ds[2], ds[0]])
    assert batch.rows.tolist() == [2, 0] and batch.desirable.tolist() == [True, True]
    assert batch.ref_logps.tolist() == [[-5.0, -6.0], [-1.0, -2.0]] and batch.ref_logps.dtype == torch.float32
    ids, attention, action = batch.flat()
    assert ids.shape[0] == 4 and bool((action.sum(dim=1) > 0).all())
    parts = batch.split(1)                                 # micro-batches keep their rows' figures
    assert [p.rows.tolist() for p in parts] == [[2], [0]] and parts[1].ref_logps.tolist() == [[-1.0, -2.0]]
