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


def test_shared_prefix_gives_the_full_loss_and_gradients(lively_model):
    """Encoding the prefix every row shares once (batch 1) and repeating its keys and values gives
    the loss and the gradients of the full rows, through a LoRA model as in training."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from selfguide.stages.train import PadCollator, shared_prefix_length, shared_prefix_loss

    gen = torch.Generator().manual_seed(1)
    prefix = torch.randint(5, 300, (30,), generator=gen).tolist()
    batch = []
    for own, answer in ((7, 3), (4, 5), (9, 2)):
        ids = prefix + torch.randint(5, 300, (own + answer,), generator=gen).tolist()
        batch.append({"input_ids": ids, "labels": [-100] * (30 + own) + ids[30 + own:]})
    for row in batch[1:]:
        row["input_ids"][30] = batch[0]["input_ids"][30]  # the common start may run into the rows' own tokens
    assert shared_prefix_length(batch) == 31
    assert shared_prefix_length([batch[0], batch[0]]) == 36  # it stops before a prompt ends (37 prompt tokens)
    assert shared_prefix_length([batch[0], {"input_ids": [1, 2], "labels": [-100, 2]}]) == 0

    def model():
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(str(lively_model), dtype=torch.float32)
        lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                               task_type="CAUSAL_LM"))
        for n, p in lora.named_parameters():
            if "lora_B" in n:  # non-zero B, so the adapters change the prefix's keys and values
                torch.nn.init.normal_(p, std=0.02)
        return lora

    def grads(m):
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}

    plain_model, shared_model = model(), model()
    plain = plain_model(**PadCollator(pad_id=0)(batch)).loss
    plain.backward()
    shared_inputs = PadCollator(pad_id=0, prefix_len=31)(batch)
    assert shared_inputs["prefix_ids"].shape == (1, 31) and shared_inputs["input_ids"].shape == (3, 10)
    shared = shared_prefix_loss(shared_model, shared_inputs)
    shared.backward()
    assert plain.item() > 1.0 and torch.allclose(plain, shared, atol=1e-5), (plain, shared)
    want, got = grads(plain_model), grads(shared_model)
    assert want and any(w.abs().max() > 0 for n, w in want.items() if "lora_A" in n)
    for name, g in want.items():
        assert torch.allclose(g, got[name], atol=1e-5, rtol=1e-4), name
