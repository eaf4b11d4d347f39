

def test_batch_calibration_removes_a_letter_prior_and_keeps_the_content():
    import numpy as np

    from pkt_core.evaluation.diagnostics import batch_calibrated_predictions

    rng = np.random.default_rng(3)
    items, options = 4000, 4
    gold = rng.integers(0, options, items)
    # A model that knows the answer a little (+1 nat on the gold option, noise of 1) and prefers B by 3 nats.
    content = rng.normal(0.0, 1.0, (items, options))
    content[np.arange(items), gold] += 1.0
    biased = content + np.array([0.0, 3.0, 0.0, 0.0])
    raw = (biased.argmax(1) == gold).mean()
    calibrated = (batch_calibrated_predictions(biased) == gold).mean()
    knows = (content.argmax(1) == gold).mean()  # what the model knows with no prior at all
    assert raw < 0.30 < 0.45 < knows  # the prior hides it: raw is near B's share of the golds
    assert abs(calibrated - knows) < 0.03
    # Raw log-likelihoods carry a per-item constant (the prompt's own likelihood): it changes nothing.
    per_item = biased + rng.normal(-40.0, 5.0, (items, 1))
    assert np.array_equal(batch_calibrated_predictions(per_item), batch_calibrated_predictions(biased))
    # A prior on another letter is removed as well.
    other = content + np.array([0.0, 0.0, 0.0, 2.5])
    assert abs((batch_calibrated_predictions(other) == gold).mean() - knows) < 0.03
