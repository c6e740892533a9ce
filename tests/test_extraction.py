"""Extraction on the tiny random LLaDA-V-style model: gradients, replay, batching, hooks."""

import numpy as np
import pytest
import torch

import diffusion_cam as dc
from diffusion_cam.adapters.base import GenerationConfig
from diffusion_cam.errors import InfeasibleStateError, LayerError, TargetError, UnknownNameError
from diffusion_cam.extract import CAM_FORMULAS, Target, cam_from_grid, count_hooks, grid_gradients, target_scores
from diffusion_cam.generation import curve_counts, llada_generate, timestep_count

PROMPT = "describe the image"


def _run(tiny, image):
    inputs = tiny.prepare([image], PROMPT, 8)
    return inputs, llada_generate(tiny, inputs, GenerationConfig(gen_length=8))


def test_gradients_reach_every_image_position_midway_and_none_at_last_block(tiny, image):
    inputs, gen = _run(tiny, image)
    targets = [Target(inputs.answer_start + i, gen.answer_ids[i]) for i in range(8)]
    last = len(tiny.blocks()) - 1
    gg = grid_gradients(tiny, inputs, gen.sequence, [1, last], lambda lg: target_scores(lg, targets), 8)
    mid = gg.grads[0][0]  # (K, h, w, D)
    assert mid.shape == (8, 6, 6, 32)
    per_position = mid.abs().sum(-1)  # (K, h, w)
    assert (per_position > 0).all(), "some image position got no gradient at an intermediate block"
    assert gg.grads[1][0].abs().max() == 0, "the last block's image positions cannot reach answer logits"


def test_trajectory_replay_reproduces_generation_logits(tiny, image):
    inputs, gen = _run(tiny, image)
    assert len(gen.steps) == 8 and sorted(p for s in gen.steps for p in s.committed) == list(range(8))
    for step in gen.steps:
        with torch.no_grad():
            logits = tiny.forward(inputs, step.sequence[None])[0]
        masked = step.sequence == tiny.mask_token_id
        for p, tid in zip(step.committed, step.committed_ids):
            pos = inputs.answer_start + p
            assert masked[pos]
            assert int(logits[pos].argmax()) == tid
        # the replay is bit-identical to a second replay (no hidden randomness)
        with torch.no_grad():
            again = tiny.forward(inputs, step.sequence[None])[0]
        assert torch.equal(logits, again)


def test_committed_ids_match_final_answer(tiny, image):
    _, gen = _run(tiny, image)
    for step in gen.steps:
        for p, tid in zip(step.committed, step.committed_ids):
            assert gen.answer_ids[p] == tid
            assert gen.commit_step[p] == step.index


@pytest.mark.parametrize("strategy", ["expand", "vmap"])
def test_batched_vjp_equals_per_token_backward(tiny, image, strategy):
    inputs, gen = _run(tiny, image)
    targets = [Target(inputs.answer_start + i, gen.answer_ids[i]) for i in range(8)]
    batched = grid_gradients(tiny, inputs, gen.sequence, [1, 2], lambda lg: target_scores(lg, targets),
                             chunk_size=3, strategy=strategy)
    for k, t in enumerate(targets):
        single = grid_gradients(tiny, inputs, gen.sequence, [1, 2], lambda lg, t=t: target_scores(lg, [t]),
                                chunk_size=1, strategy="vmap")
        for layer in range(2):
            torch.testing.assert_close(batched.grads[layer][0][k], single.grads[layer][0][0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(batched.acts[0][0], single.acts[0][0])
        assert torch.allclose(batched.scores[k], single.scores[0])


@pytest.fixture(scope="module")
def shapes():
    """The built-in model and a shipped scene whose answer has distinct words; at block 0 every
    formula and score gives its words real maps, unlike the tiny random model's."""
    scene = dc.example_scenes()[2]
    return dc.load_model("shapes-tiny"), scene.image, scene.caption


#: half wrong, so that no explained word is near-certain: logprob's gradient, (1 - p) times
#: logodds', would otherwise shrink below the min-max epsilon (test_logodds_... shows why)
GIVEN = "a red cross and a purple triangle and a green square"


@pytest.mark.parametrize("score", ["logit", "logprob", "logodds", "contrastive", "vocab_sum"])
@pytest.mark.parametrize("cam", CAM_FORMULAS)
def test_every_formula_and_score_gives_normalised_word_maps(shapes, score, cam):
    adapter, image, _ = shapes
    m = dc.GradientCAM(adapter, layer=0, score=score, cam=cam, state="final", modules=())
    words = ["red", "triangle", "square"]
    a = m.explain(image, PROMPT, targets=words, answer=GIVEN)
    assert a.tokens == words and not any(a.degenerate), f"{cam} x {score}: some map has no evidence"
    assert a.maps.dtype == np.float32 and a.maps.shape == (3, 96, 96) and a.grid_maps.shape == (3, 12, 12)
    # min-max with eps 1e-8 (spec): every map spans [0, 1]
    for raw in a.raw_grid_maps:
        assert raw.min() == 0 and raw.max() > 0.99
    # the maps are the words' own, not one picture repeated
    assert not np.allclose(a.raw_grid_maps[0], a.raw_grid_maps[1], atol=1e-3)
    assert not np.allclose(a.raw_grid_maps[1], a.raw_grid_maps[2], atol=1e-3)


def test_logodds_is_log_p_over_one_minus_p_and_keeps_its_gradient_when_p_nears_one():
    torch.manual_seed(0)
    hidden = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    head = torch.randn(8, 5, dtype=torch.float64)
    targets = [Target(0, 1), Target(1, 4), Target(2, 0)]
    logits = hidden @ head
    odds = target_scores(logits, targets, "logodds")
    p = torch.softmax(logits.float(), -1)[[0, 1, 2], [1, 4, 0]]
    torch.testing.assert_close(odds, torch.log(p) - torch.log1p(-p), rtol=1e-5, atol=1e-5)
    # logprob's gradient is (1 - p) times logodds': the same direction, so the same map
    for k in range(3):
        g_odds, = torch.autograd.grad(target_scores(hidden @ head, targets[k:k + 1], "logodds")[0], hidden)
        g_prob, = torch.autograd.grad(target_scores(hidden @ head, targets[k:k + 1], "logprob")[0], hidden)
        torch.testing.assert_close(g_prob, (1 - p[k].double()) * g_odds, rtol=1e-4, atol=1e-6)
    # a confident token: p rounds to 1 in float32, logprob's gradient is gone, logodds' is not
    confident = torch.tensor([[40.0, 0.0, 1.0]], requires_grad=True)
    g_prob, = torch.autograd.grad(target_scores(confident, [Target(0, 0)], "logprob")[0], confident)
    g_odds, = torch.autograd.grad(target_scores(confident, [Target(0, 0)], "logodds")[0], confident)
    assert g_prob[0, 0] == 0 and g_prob.abs().max() < 1e-16
    torch.testing.assert_close(g_odds, torch.tensor([[1.0, -0.2689414, -0.7310586]]))


def test_states_differ_and_trajectory_groups_by_step(tiny, image):
    traj = dc.GradientCAM(tiny, layer=1, state="trajectory", modules=()).explain(image, PROMPT)
    final = dc.GradientCAM(tiny, layer=1, state="final", modules=()).explain(image, PROMPT)
    assert traj.answer == final.answer and traj.steps == final.steps
    assert sorted(traj.steps) == list(range(8))
    assert not np.allclose(traj.raw_grid_maps, final.raw_grid_maps)


def test_several_layers_average_after_normalisation(tiny, image):
    one = dc.GradientCAM(tiny, layer=0, modules=()).explain(image, PROMPT)
    two = dc.GradientCAM(tiny, layer=1, modules=()).explain(image, PROMPT)
    both = dc.GradientCAM(tiny, layer=[0, 1], modules=()).explain(image, PROMPT)
    mean = (one.raw_grid_maps + two.raw_grid_maps) / 2
    lo = mean.min(axis=(1, 2), keepdims=True)
    hi = mean.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(both.raw_grid_maps, (mean - lo) / (hi - lo + 1e-8), atol=1e-5)


@pytest.mark.parametrize("strategy", ["expand", "vmap"])
def test_hooks_removed_after_exception_inside_explain(tiny, image, monkeypatch, strategy):
    real_forward = tiny.forward
    calls = []

    def forward_then_fail(inputs, sequence):
        logits = real_forward(inputs, sequence)
        if torch.is_grad_enabled():  # generation runs without grad; extraction with
            calls.append(count_hooks(tiny.model))
            raise RuntimeError("boom after the hooked forward")
        return logits

    monkeypatch.setattr(tiny, "forward", forward_then_fail)
    monkeypatch.setattr(type(tiny), "batch_expand_safe", strategy == "expand")
    method = dc.GradientCAM(tiny, layer=[0, 2], modules=())
    with pytest.raises(RuntimeError, match="boom"):
        method.explain(image, PROMPT)
    # two hooked blocks and the output head's row cut (only the explained positions are projected)
    assert calls and calls[0] == 3, "the hooks were not in place during the forward"
    assert count_hooks(tiny.model) == 0


def test_no_hooks_left_after_success(tiny, image):
    dc.GradientCAM(tiny, layer=[0, 1, 2], modules=()).explain(image, PROMPT)
    assert count_hooks(tiny.model) == 0


def test_targets_by_index_and_word(shapes):
    adapter, image, caption = shapes
    method = dc.GradientCAM(adapter, modules=())
    full = method.explain(image, PROMPT)
    assert full.tokens == caption.split()  # distinct words: choosing one by word is not trivial
    part = method.explain(image, PROMPT, targets=[6, 2])
    assert part.token_indices == [2, 6] and part.tokens == ["cross", "triangle"]
    np.testing.assert_allclose(part.raw_grid_maps, full.raw_grid_maps[[2, 6]], atol=1e-6)
    by_word = method.explain(image, PROMPT, targets=["circle", "purple"])
    assert by_word.token_indices == [5, 10] and by_word.tokens == ["purple", "circle"]
    np.testing.assert_allclose(by_word.raw_grid_maps, full.raw_grid_maps[[5, 10]], atol=1e-6)
    assert method.explain(image, PROMPT, targets="a").token_indices == [0, 4, 8]  # every occurrence
    with pytest.raises(TargetError, match="out of range"):
        method.explain(image, PROMPT, targets=[99])
    with pytest.raises(TargetError, match="not in the answer"):
        method.explain(image, PROMPT, targets=["square"])


def test_a_word_split_into_subwords_is_one_target(tiny, image, monkeypatch):
    full = dc.GradientCAM(tiny, layer=1, modules=()).explain(image, PROMPT)
    n = len(full.tokens)
    assert n >= 3
    # the same answer as a subword tokenizer would spell it: tokens 1 and 2 form one word
    texts = ["a", " gir", "affe"] + [f" w{i}" for i in range(3, n)]
    monkeypatch.setattr(type(tiny), "decode", lambda self, ids: texts[: len(ids)])
    exp = dc.GradientCAM(tiny, layer=1, modules=()).explain(image, PROMPT, targets="giraffe")
    assert exp.token_indices == [1, 2] and exp.words() == [("giraffe", [0, 1])]
    np.testing.assert_allclose(exp.raw_grid_maps, full.raw_grid_maps[[1, 2]], atol=1e-6)


def test_bad_layer_state_and_names(tiny):
    with pytest.raises(LayerError, match="layer 7 is out of range.*4 blocks"):
        dc.GradientCAM(tiny, layer=7)
    with pytest.raises(LayerError):
        dc.GradientCAM(tiny, layer=-5)
    with pytest.raises(UnknownNameError, match="unknown score"):
        dc.GradientCAM(tiny, score="nope")
    with pytest.raises(UnknownNameError, match="unknown state"):
        dc.GradientCAM(tiny, state="middle")
    with pytest.raises(UnknownNameError, match="unknown refinement module"):
        dc.GradientCAM(tiny, modules=("akd", "blur"))
    with pytest.raises(UnknownNameError, match="unknown method"):
        dc.get_method("grad-cam++", tiny)


def test_infeasible_state_is_an_error_that_says_why(tiny):
    tiny.state_support = {"trajectory": "answer steps only see the cached prompt", "final": None}
    with pytest.raises(InfeasibleStateError, match="cached prompt"):
        dc.GradientCAM(tiny, state="trajectory")


def test_all_zero_gradient_gives_flagged_zero_map(tiny, image, monkeypatch):
    from diffusion_cam.errors import DegenerateMapWarning
    import diffusion_cam.methods.gradient as grad_mod

    real = grad_mod.grid_gradients

    def zero_grads(*args, **kwargs):
        gg = real(*args, **kwargs)
        gg.grads = [[torch.zeros_like(g) for g in layer] for layer in gg.grads]
        return gg

    monkeypatch.setattr(grad_mod, "grid_gradients", zero_grads)
    with pytest.warns(DegenerateMapWarning, match="no positive evidence"):
        exp = dc.DiffusionCAM(tiny, layer=1).explain(image, PROMPT)
    assert all(exp.degenerate)
    assert not exp.maps.any() and np.isfinite(exp.maps).all()


def test_sampling_needs_seed_and_is_reproducible(tiny, image):
    inputs = tiny.prepare([image], PROMPT, 8)
    with pytest.raises(ValueError, match="seed"):
        llada_generate(tiny, inputs, GenerationConfig(gen_length=8, temperature=1.0))
    a = llada_generate(tiny, inputs, GenerationConfig(gen_length=8, temperature=1.0, seed=3))
    b = llada_generate(tiny, inputs, GenerationConfig(gen_length=8, temperature=1.0, seed=3))
    assert a.answer_ids == b.answer_ids


def test_block_wise_generation_commits_left_block_first(tiny, image):
    inputs = tiny.prepare([image], PROMPT, 8)
    gen = llada_generate(tiny, inputs, GenerationConfig(gen_length=8, steps=4, block_length=4))
    assert len(gen.steps) == 4
    assert all(p < 4 for s in gen.steps[:2] for p in s.committed)
    assert all(p >= 4 for s in gen.steps[2:] for p in s.committed)


def test_timestep_schedule_counts_by_hand():
    # 10 masks, 4 steps: grid 1, .75025, .5005, .25075, .001
    assert timestep_count(10, 10, 0, 4) == 2  # int(10 * (1 - .75025))
    assert timestep_count(8, 10, 1, 4) == 2  # t = .8: int(8 * (1 - .5005 / .8))
    assert timestep_count(6, 10, 2, 4) == 3  # t = .6: int(6 * (1 - .25075 / .6))
    assert timestep_count(1, 10, 3, 4) == 1  # the grid's end takes the rest
    # 64 masks over 64 steps: the first grid point rounds to 0 tokens, the next to 1
    assert timestep_count(64, 64, 0, 64) == 1
    # after a confident step committed many, the count follows the share left
    # (t = 5/64 = .078: the first grid point below it is index 60, .0634 -> 0 tokens; index 61, .0478 -> 1)
    assert timestep_count(5, 64, 1, 64) == 1
    assert timestep_count(0, 10, 2, 4) == 0


def test_lavida_curve_schedules_by_hand():
    # 10 masks, 4 steps, t = 0, .25, .5, .75, 1; the increments of int(10 * share(t)) are reversed
    # shift 3: share 3t / (1 + 2t) = 0, .5, .75, .9, 1 -> 0, 5, 7, 9, 10 -> 5, 2, 2, 1
    assert curve_counts(10, 4, "shift") == [1, 2, 2, 5]
    # cosine: (1 - cos(pi t)) / 2 = 0, .146, .5, .854, 1 -> 0, 1, 5, 8, 10 -> 1, 4, 3, 2
    assert curve_counts(10, 4, "cosine") == [2, 3, 4, 1]
    # logit_normal: Phi(logit t) = 0, .136, .5, .864, 1 -> the same floors as cosine here
    assert curve_counts(10, 4, "logit_normal") == [2, 3, 4, 1]
    # shift 1 is the straight line
    assert curve_counts(10, 4, "shift", shift=1.0) == [3, 2, 3, 2]
    # 4 masks, cosine: floors 0, 0, 2, 3, 4 -> 0, 2, 1, 1; the empty step gets one token and
    # the excess comes off the first step with more than one
    assert curve_counts(4, 4, "cosine") == [1, 1, 1, 1]
    # more steps than masks: one token per step, as many steps as masks
    assert curve_counts(3, 8, "shift") == [1, 1, 1]
    for schedule in ("shift", "cosine", "logit_normal"):
        for n in (1, 7, 64, 129):
            counts = curve_counts(n, 32, schedule)
            assert sum(counts) == n and min(counts) >= 1 and len(counts) == min(n, 32)


@pytest.mark.parametrize("schedule", ["shift", "cosine", "logit_normal"])
def test_curve_schedules_commit_their_counts_and_replay(tiny, image, schedule):
    inputs = tiny.prepare([image], PROMPT, 8)
    gen = llada_generate(tiny, inputs, GenerationConfig(gen_length=8, steps=4, schedule=schedule))
    assert [len(st.committed) for st in gen.steps] == curve_counts(8, 4, schedule)
    assert sorted(p for st in gen.steps for p in st.committed) == list(range(8))
    _replays(tiny, inputs, gen)


def test_suppressed_tokens_are_never_proposed(tiny, image):
    inputs = tiny.prepare([image], PROMPT, 8)
    plain = llada_generate(tiny, inputs, GenerationConfig(gen_length=8))
    banned = sorted(set(plain.answer_ids))[:2]
    gen = llada_generate(tiny, inputs, GenerationConfig(gen_length=8, suppress_token_ids=banned))
    assert gen.config.suppress_token_ids == tuple(banned)
    assert not set(gen.answer_ids) & set(banned)
    assert sorted(p for st in gen.steps for p in st.committed) == list(range(8))


def test_stop_early_fills_only_the_positions_before_a_committed_stop(tiny, image, monkeypatch):
    inputs = tiny.prepare([image], PROMPT, 8)
    plain = llada_generate(tiny, inputs, GenerationConfig(gen_length=8))
    # make the token committed at step 2 (somewhere inside the canvas) a stop token
    (q,) = plain.steps[2].committed
    stop_id = plain.answer_ids[q]
    monkeypatch.setattr(type(tiny), "stop_token_ids", property(lambda self: frozenset({stop_id})))
    early = llada_generate(tiny, inputs, GenerationConfig(gen_length=8, stop_early=True))
    first = min(p for p in range(8) if early.answer_ids[p] == stop_id)
    found_at = early.commit_step[first]
    # up to the step that commits the stop nothing differs from plain sampling
    assert [s.committed for s in early.steps[: found_at + 1]] == [s.committed for s in plain.steps[: found_at + 1]]
    # afterwards only positions before the stop are committed, then generation ends
    assert all(p < first for s in early.steps[found_at + 1 :] for p in s.committed)
    assert all(early.commit_step[p] >= 0 for p in range(first + 1))
    later = [p for p in range(first + 1, 8) if early.commit_step[p] < 0]
    assert all(early.answer_ids[p] == tiny.mask_token_id for p in later)
    assert len(early.steps) == 8 - len(later) and later  # the stop came early enough to save steps
    # without the flag the same stop token changes nothing
    same = llada_generate(tiny, inputs, GenerationConfig(gen_length=8))
    assert same.answer_ids == plain.answer_ids
    _replays(tiny, inputs, early)


def _replays(tiny, inputs, gen):
    for step in gen.steps:
        with torch.no_grad():
            logits = tiny.forward(inputs, step.sequence[None])[0]
        for p, tid in zip(step.committed, step.committed_ids):
            assert int(logits[inputs.answer_start + p].argmax()) == tid


@pytest.mark.parametrize("remasking", ["margin", "entropy"])
def test_margin_and_entropy_confidences_complete_the_answer_and_replay(tiny, image, remasking):
    inputs = tiny.prepare([image], PROMPT, 8)
    gen = llada_generate(tiny, inputs, GenerationConfig(gen_length=8, remasking=remasking))
    assert len(gen.steps) == 8 and sorted(p for st in gen.steps for p in st.committed) == list(range(8))
    assert gen.answer_ids == llada_generate(tiny, inputs, GenerationConfig(gen_length=8, remasking=remasking)).answer_ids
    _replays(tiny, inputs, gen)


def test_confident_decoding_commits_everything_above_the_threshold(tiny, image):
    inputs = tiny.prepare([image], PROMPT, 8)
    # every prediction has a probability above 0: one step commits the whole canvas
    once = llada_generate(tiny, inputs, GenerationConfig(gen_length=8, threshold=0.0))
    assert len(once.steps) == 1 and once.steps[0].committed == list(range(8))
    # nothing is that sure: the schedule decides, one token per step as without a threshold
    plain = llada_generate(tiny, inputs, GenerationConfig(gen_length=8))
    never = llada_generate(tiny, inputs, GenerationConfig(gen_length=8, threshold=0.999999))
    assert [st.committed for st in never.steps] == [st.committed for st in plain.steps]
    # in between: a step commits exactly the positions above the threshold, or the scheduled count
    mid = llada_generate(tiny, inputs, GenerationConfig(gen_length=8, steps=8, threshold=0.2, schedule="timestep"))
    assert sorted(p for st in mid.steps for p in st.committed) == list(range(8))
    for st in mid.steps[:-1]:
        with torch.no_grad():
            probs = torch.softmax(tiny.forward(inputs, st.sequence[None])[0].float(), -1)
        masked = [p for p in range(8) if int(st.sequence[inputs.answer_start + p]) == tiny.mask_token_id]
        sure = [p for p in masked if float(probs[inputs.answer_start + p].max()) > 0.2]
        assert st.committed == sure or (not sure and len(st.committed) >= 1)
    _replays(tiny, inputs, mid)


def test_sampler_options_are_checked(tiny, image):
    inputs = tiny.prepare([image], PROMPT, 8)
    with pytest.raises(ValueError, match="unknown remasking 'top_p'"):
        llada_generate(tiny, inputs, GenerationConfig(gen_length=8, remasking="top_p"))
    with pytest.raises(ValueError, match="unknown schedule 'sigmoid'"):
        llada_generate(tiny, inputs, GenerationConfig(gen_length=8, schedule="sigmoid"))
    with pytest.raises(ValueError, match="probability confidence"):
        llada_generate(tiny, inputs, GenerationConfig(gen_length=8, remasking="entropy", threshold=0.5))
    with pytest.raises(ValueError, match=r"threshold 1.5 must lie in \[0, 1\)"):
        llada_generate(tiny, inputs, GenerationConfig(gen_length=8, threshold=1.5))


def test_diffusion_cam_refines_raw_maps_with_the_four_modules(tiny, image):
    exp = dc.DiffusionCAM(tiny, layer=1).explain(image, PROMPT)
    assert exp.settings["modules"] == ["akd", "dacg", "cba", "sicd"]
    answer_ids = exp.token_ids  # every token is explained, so these are the whole answer
    for raw, refined in zip(exp.raw_grid_maps, exp.grid_maps):
        expected = dc.refine.refine(raw.astype(np.float64), answer_ids)
        np.testing.assert_allclose(refined, expected, atol=1e-6)
    assert not np.allclose(exp.grid_maps, exp.raw_grid_maps)
    assert exp.maps.shape == exp.raw_maps.shape == (len(exp.tokens), 48, 48)


def test_subset_of_targets_uses_the_whole_answer_for_reference_sicd(tiny, image):
    full = dc.DiffusionCAM(tiny, layer=1).explain(image, PROMPT)
    part = dc.DiffusionCAM(tiny, layer=1).explain(image, PROMPT, targets=[1])
    np.testing.assert_allclose(part.grid_maps[0], full.grid_maps[1], atol=1e-6)


def test_get_method_by_name_matches_class(tiny, image):
    a = dc.get_method("diffusion-cam", tiny, layer=1).explain(image, PROMPT)
    b = dc.DiffusionCAM(tiny, layer=1).explain(image, PROMPT)
    assert np.array_equal(a.maps, b.maps)


def test_chunk_size_auto_and_fixed_give_the_same_maps(tiny, image):
    auto = dc.DiffusionCAM(tiny, layer=1, chunk_size="auto").explain(image, PROMPT)
    fixed = dc.DiffusionCAM(tiny, layer=1, chunk_size=3).explain(image, PROMPT)
    np.testing.assert_allclose(auto.raw_grid_maps, fixed.raw_grid_maps, atol=1e-6)
    with pytest.raises(ValueError, match="chunk_size"):
        dc.DiffusionCAM(tiny, layer=1, chunk_size=0)


def _minmax(h):
    lo, hi = h.min(axis=(1, 2), keepdims=True), h.max(axis=(1, 2), keepdims=True)
    return (h - lo) / (hi - lo + 1e-8)


def _gradcam_pp_weights(acts, grads):
    # w_c = sum_ij alpha_ijc relu(g_ijc), alpha = g^2 / (2 g^2 + sum_ab A_abc g^3), one channel at a time
    k, h, w, d = grads.shape
    weights = np.zeros((k, d))
    for t in range(k):
        for c in range(d):
            total = acts[:, :, c].sum()
            for i in range(h):
                for j in range(w):
                    g = grads[t, i, j, c]
                    den = 2 * g**2 + total * g**3
                    alpha = g**2 / den if den != 0 else 0.0
                    weights[t, c] += alpha * max(g, 0.0)
    return weights


def test_map_formulas_match_their_definitions():
    rng = np.random.default_rng(0)
    acts = rng.normal(2.0, 1.0, (4, 5, 8))  # positive offset, as the built-in model's background tokens
    grads = rng.normal(0.0, 1.0, (3, 4, 5, 8))
    pos_g = np.maximum(grads, 0)
    centred = acts - acts.mean(axis=(0, 1))
    expected = {
        "poscam": np.einsum("kd,hwd->khw", pos_g.mean(axis=(1, 2)), np.maximum(acts, 0)) / 8,
        "gradcam": np.maximum(np.einsum("kd,hwd->khw", grads.mean(axis=(1, 2)), acts), 0),
        "poscam-centred": np.einsum("kd,hwd->khw", pos_g.mean(axis=(1, 2)), np.maximum(centred, 0)) / 8,
        "layercam": np.einsum("khwd,hwd->khw", pos_g, np.maximum(centred, 0)) / 8,
        "taylor": np.maximum(np.einsum("khwd,hwd->khw", grads, centred), 0),
        "hirescam": np.maximum(np.einsum("khwd,hwd->khw", grads, acts), 0),
        "gradcam++": np.maximum(np.einsum("kd,hwd->khw", _gradcam_pp_weights(acts, grads), acts), 0),
    }
    assert set(expected) == set(CAM_FORMULAS)
    for name, h in expected.items():
        maps, flags = cam_from_grid(torch.from_numpy(acts), torch.from_numpy(grads), name)
        flat = h.reshape(len(h), -1)
        constant = flat.max(1) == flat.min(1)  # e.g. Grad-CAM with no positive evidence: zeros, flagged
        assert maps.dtype == torch.float32 and np.array_equal(flags.numpy(), constant), name
        np.testing.assert_allclose(maps.numpy()[~constant], _minmax(h)[~constant], atol=1e-5, err_msg=name)
        assert not maps.numpy()[constant].any()


def test_unknown_formula_is_named_in_the_error(tiny):
    with pytest.raises(UnknownNameError, match="poscam-centered"):
        dc.GradientCAM(tiny, cam="poscam-centered")


def test_formula_defaults_to_the_adapters_choice(tiny, monkeypatch):
    assert tiny.default_cam == "poscam"  # the method spec's, for models without a measured choice
    assert dc.DiffusionCAM(tiny).cam == "poscam"
    monkeypatch.setattr(type(tiny), "default_cam", property(lambda self: "layercam"))
    assert dc.DiffusionCAM(tiny).cam == "layercam"
    assert dc.DiffusionCAM(tiny, cam="taylor").cam == "taylor"
    assert dc.get_method("gradcam", tiny).cam == "gradcam"  # baselines keep their own formula


def test_score_defaults_to_the_adapters_choice_and_reaches_the_gradients(tiny, image, monkeypatch):
    assert tiny.default_score == "logit"  # the method spec's, for models without a measured choice
    assert dc.DiffusionCAM(tiny).score == "logit"
    with pytest.raises(UnknownNameError, match="unknown score 'log-prob'"):
        dc.DiffusionCAM(tiny, score="log-prob")
    logit = dc.DiffusionCAM(tiny).explain(image, PROMPT)
    monkeypatch.setattr(type(tiny), "default_score", property(lambda self: "logprob"))
    method = dc.DiffusionCAM(tiny)
    assert method.score == "logprob" and method.settings()["score"] == "logprob"
    assert dc.DiffusionCAM(tiny, score="logit").score == "logit"  # an explicit choice wins
    logprob = method.explain(image, PROMPT)
    assert logprob.tokens == logit.tokens
    assert not np.array_equal(logprob.raw_grid_maps, logit.raw_grid_maps)  # a different gradient


def test_akd_border_defaults_to_the_adapters_choice_and_reaches_the_maps(tiny, image, monkeypatch):
    assert tiny.default_akd_border == "reflect101"  # the reference's, for models without a measured choice
    ref = dc.DiffusionCAM(tiny)
    assert ref.akd_border == "reflect101" and ref.settings()["akd_border"] == "reflect101"
    with pytest.raises(UnknownNameError, match="unknown AKD border 'wrap'"):
        dc.DiffusionCAM(tiny, akd_border="wrap")
    monkeypatch.setattr(type(tiny), "default_akd_border", property(lambda self: "symmetric"))
    sym = dc.DiffusionCAM(tiny)
    assert sym.akd_border == "symmetric"
    run = sym.generate(image, PROMPT)
    idx = list(range(len(run.answer_ids)))
    raw = sym.compute(run, idx)
    a = sym.build(run, idx, raw).grid_maps
    b = dc.DiffusionCAM(tiny, akd_border="reflect101").build(run, idx, raw).grid_maps
    c = dc.DiffusionCAM(tiny, akd_border="reflect101", modules=("dacg", "cba", "sicd")).build(run, idx, raw).grid_maps
    d = dc.DiffusionCAM(tiny, modules=("dacg", "cba", "sicd")).build(run, idx, raw).grid_maps
    assert not np.array_equal(a, b)  # the border changes AKD's output
    assert np.array_equal(c, d)  # and nothing else


# ------------------------------------------------------------------ logits at the scored positions only
def test_forward_at_projects_only_the_asked_rows(tiny, image):
    inputs, gen = _run(tiny, image)
    seq = gen.sequence[None]
    positions = [inputs.answer_start + 5, inputs.answer_start, 2]
    from diffusion_cam.testing import logits_both_ways

    full, part, shapes = logits_both_ways(tiny, inputs, seq, positions)
    vocab = full.shape[-1]
    assert shapes == [(1, seq.shape[1], vocab), (1, 3, vocab)]
    torch.testing.assert_close(part, full[:, positions], rtol=1e-5, atol=1e-6)
    assert count_hooks(tiny.model) == 0


def test_an_adapter_without_output_head_indexes_its_full_forward(tiny, image, monkeypatch):
    inputs, gen = _run(tiny, image)
    seq = gen.sequence[None]
    monkeypatch.setattr(type(tiny), "output_head", lambda self: None)
    with torch.no_grad():
        part = tiny.forward_at(inputs, seq, [inputs.answer_start + 1, 0])
        full = tiny.forward(inputs, seq)
    assert torch.equal(part, full[:, [inputs.answer_start + 1, 0]])


def test_head_rows_passes_other_calls_through_and_always_unhooks():
    from diffusion_cam.adapters.head_rows import head_rows

    head = torch.nn.Linear(4, 6)
    x = torch.randn(2, 5, 4)
    with head_rows(head, 5, [4, 1]) as cut:
        assert head(torch.randn(2, 3, 4)).shape == (2, 3, 6)  # another length: untouched
        out = head(x)
    assert cut.cut == 1 and out.shape == (2, 2, 6)
    torch.testing.assert_close(out, head(x)[:, [4, 1]])
    emb = torch.nn.Embedding(10, 4)
    with head_rows(emb, 5, [0]) as cut:  # a tied input embedding looks up ids: never narrowed
        assert emb(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 4)
    assert cut.cut == 0 and cut.pick(torch.arange(10.0).reshape(1, 5, 2)).tolist() == [[[0.0, 1.0]]]
    with pytest.raises(RuntimeError, match="boom"):
        with head_rows(head, 5, [0]):
            raise RuntimeError("boom")
    assert count_hooks(head) == 0 and count_hooks(emb) == 0


@pytest.mark.parametrize("strategy", ["expand", "vmap"])
def test_gradients_through_the_narrowed_head_equal_the_full_forward(tiny, image, strategy):
    from diffusion_cam.extract import window

    inputs, gen = _run(tiny, image)
    a0 = inputs.answer_start
    targets = [Target(a0 + i, gen.answer_ids[i]) for i in (6, 1, 3, 1)]
    rows = window(targets)
    full = grid_gradients(tiny, inputs, gen.sequence, [1, 2], lambda lg: target_scores(lg, targets, "logodds"), 2,
                          strategy=strategy)
    part = grid_gradients(tiny, inputs, gen.sequence, [1, 2], lambda lg: target_scores(lg, targets, "logodds", rows),
                          2, strategy=strategy, positions=rows)
    torch.testing.assert_close(part.scores, full.scores)
    for a, b in zip(full.grads, part.grads):
        for ga, gb in zip(a, b):
            torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-7)
            assert ga.abs().amax(dim=(1, 2, 3)).min() > 0  # every target has a gradient
