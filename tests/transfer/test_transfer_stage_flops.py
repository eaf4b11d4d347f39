"""The frontier stage's FLOP formula against torch's own count of the matmuls a real stage runs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transfer_fixtures import addition_samples

from pkt_core.transfer.alignment_data import AlignmentSample, tokenise_samples
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.frontier import train_stage
from pkt_core.transfer.frontier_replay import FrontierReplay
from pkt_core.transfer.stage_flops import frontier_stage_flops
from pkt_core.transfer.supervision import Supervision


def _stage_inputs(target, variant: str, losses: dict | None):
    # Seven short prompts and one long one: batches of 3 pad to different lengths, and the last
    # batch is short, so padding and the ragged tail both enter the count.
    samples = tokenise_samples(target.tokenizer, [*addition_samples(7, seed=3),
                                                  AlignmentSample("long", "a longer prompt: 1+2=", "3")], 32)
    config = TransferConfig(source="s", target="t", variant=variant, data_file="x", steps_per_stage=2, batch_size=3,
                            learning_rate=1e-3, **({"losses": losses} if losses else {}))
    count, length = samples.input_ids.shape
    width, vocab = target.adapter.width, target.adapter.vocab_size
    # FLOPs do not depend on the supervision's values: random constants of the right shapes.
    generator = torch.Generator().manual_seed(0)
    targets = {(layer, site): torch.randn(count, length, width, generator=generator)
               for layer in range(target.adapter.num_layers) for site in ("contribution", "block_output")}
    answers = int(samples.prediction_mask().sum())
    supervision = Supervision(targets, torch.randn(answers, vocab, generator=generator).log_softmax(-1), True)
    return samples, config, supervision


@pytest.mark.parametrize(("variant", "losses"), [
    ("v1", None),  # layer cosine + output cosine: full forward, backward through later layers, head
    ("v1", {"layer_cosine": 1.0}),  # no logits: the forward stops at the frontier layer
    ("v2-relation", None),  # Gram matrices per sequence + output KL
    ("acl-fisher", None),  # Fisher surrogate through the head + output KL
])
@pytest.mark.parametrize("layer", [0, 2])
def test_count_equals_torch_flop_counter_on_a_real_stage(random_pair, variant, losses, layer):
    _, target = random_pair
    samples, config, supervision = _stage_inputs(target, variant, losses)
    with FlopCounterMode(display=False) as counter:
        train_stage(target, layer, samples, supervision, config)
    counted = frontier_stage_flops(target, samples, layer, config)
    assert counted.total == counter.get_total_flops()
    if not config.needs_final_logits() and variant == "v1":
        assert counted.head_and_losses == 0


@pytest.mark.parametrize(("variant", "losses"), [("v1", None), ("v1", {"layer_cosine": 1.0}), ("acl-fisher", None)])
def test_count_of_replayed_stages_equals_torch_flop_counter(random_pair, variant, losses):
    """The replayed schedule: the first stage records (a forward of blocks 0..L-2), the next carries
    its states through the block it skipped (layer 0 -> 2: blocks 0 and 1) and then trains."""
    _, target = random_pair
    samples, config, supervision = _stage_inputs(target, variant, losses)
    with FlopCounterMode(display=False) as counter:
        replay = FrontierReplay(target, samples, config.batch_size, 0)
        train_stage(target, 0, samples, supervision, config, replay=replay)
    assert frontier_stage_flops(target, samples, 0, config, carried_from=None).total == counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        replay.advance_to(2)
        train_stage(target, 2, samples, supervision, config, replay=replay)
    assert frontier_stage_flops(target, samples, 2, config, carried_from=0).total == counter.get_total_flops()
    plain = frontier_stage_flops(target, samples, 2, config)
    assert plain.total > frontier_stage_flops(target, samples, 2, config, carried_from=1).total


def test_hand_count_for_the_tiny_target(random_pair):
    """One batch, one step, counted by hand from the tiny target's config (width 32, MLP 64, 4 query
    heads and 2 key/value heads of 8, 3 layers): per token the Linear layers multiply
    q 32x32 + k 32x16 + v 32x16 + o 32x32 + gate 32x64 + up 32x64 + down 64x32 = 9216 times."""
    _, target = random_pair
    samples = tokenise_samples(target.tokenizer, addition_samples(4, seed=5), 32)
    rows, length = samples.input_ids.shape
    tokens, answers, attention, vocab = rows * length, int(samples.prediction_mask().sum()), 32, target.adapter.vocab_size
    forward = 2 * tokens * 9216 + 4 * rows * length**2 * attention
    full_backward = 4 * tokens * 9216 + 8 * rows * length**2 * attention
    input_backward = 2 * tokens * 9216 + 8 * rows * length**2 * attention

    def count(layer, losses):
        config = TransferConfig(source="s", target="t", data_file="x", steps_per_stage=1, batch_size=4, losses=losses)
        return frontier_stage_flops(target, samples, layer, config)

    # No logits: the forward stops after the frontier layer.
    assert count(0, {"layer_cosine": 1.0}).total == forward + full_backward
    assert count(2, {"layer_cosine": 1.0}).total == 3 * forward + full_backward
    # Logits: all three blocks forward, the later two backward for their inputs only, the head at the answers.
    with_logits = count(0, {"layer_cosine": 1.0, "answer_ce": 1.0})
    assert with_logits.blocks == 3 * forward + full_backward + 2 * input_backward
    assert with_logits.head_and_losses == 4 * answers * 32 * vocab
    # Replayed: the prefix runs once (the carry through block 1), not at every step.
    config = TransferConfig(source="s", target="t", data_file="x", steps_per_stage=3, batch_size=4,
                            losses={"layer_cosine": 1.0})
    assert frontier_stage_flops(target, samples, 2, config, carried_from=1).total == forward + 3 * (forward + full_backward)
    assert frontier_stage_flops(target, samples, 0, config, carried_from=None).total == 2 * forward + 3 * (forward + full_backward)


def test_lora_and_bad_layers_are_refused(random_pair):
    _, target = random_pair
    samples, config, _ = _stage_inputs(target, "v1", None)
    with pytest.raises(ValueError, match="block training"):
        frontier_stage_flops(target, samples, 0, TransferConfig(source="s", target="t", data_file="x", trainable="lora"))
    with pytest.raises(ValueError, match="outside"):
        frontier_stage_flops(target, samples, 3, config)
