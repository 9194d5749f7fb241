"""The training collator computes the output head only where answers are, with the same loss and
gradients as full logits."""

from __future__ import annotations


def test_completion_only_logits_give_the_full_loss_and_gradients(lively_model):
    import torch
    from transformers import AutoModelForCausalLM

    from selfguide.stages.train import PadCollator

    gen = torch.Generator().manual_seed(0)
    batch = []
    for prompt, answer in ((40, 3), (25, 5), (33, 1)):
        ids = torch.randint(5, 300, (prompt + answer,), generator=gen).tolist()
        batch.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    collated = PadCollator(pad_id=0)(batch)
    width = collated["input_ids"].shape[1]
    # the positions that predict an answer token, of any row (row 0: 39-41, row 1: 24-28, row 2: 32)
    assert collated["logits_to_keep"].tolist() == [24, 25, 26, 27, 28, 32, 39, 40, 41]
    full_labels = torch.tensor([b["labels"] + [-100] * (width - len(b["labels"])) for b in batch])

    def loss_and_grads(**inputs):
        model = AutoModelForCausalLM.from_pretrained(str(lively_model))
        out = model(**inputs)
        out.loss.backward()
        return out.loss, {n: p.grad for n, p in model.named_parameters()}

    full, full_grads = loss_and_grads(
        input_ids=collated["input_ids"], attention_mask=collated["attention_mask"], labels=full_labels
    )
    kept, kept_grads = loss_and_grads(**collated)
    assert full.item() > 1.0 and torch.allclose(full, kept, atol=1e-5)
    for name, grad in full_grads.items():
        assert torch.allclose(grad, kept_grads[name], atol=1e-5), name
