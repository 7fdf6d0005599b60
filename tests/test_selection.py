"""selection.py: BOLT's inverse transform sampling (exact rule on hand-made scores), the spreading of repeats,
determinism and coverage, and the moment rule of `fastvid find`."""

import torch

from fastvid_cli.selection import bolt_indices, find_moments, select_frames, spread_repeats, uniform_indices


def test_bolt_rule_on_a_hand_made_vector():
    # min 0, max 2: s' = [0, .5, 1, .5, 0, 0]; power 1 -> p = [0, .25, .5, .25, 0, 0]; CDF [0, .25, .75, 1, 1, 1]
    # k = 4: u = linspace(1/4, 3/4, 4) = [.25, .4167, .5833, .75] -> first CDF >= u: [1, 2, 2, 2]
    s = torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0, 0.0])
    assert bolt_indices(s, 4, power=1.0).tolist() == [1, 2, 2, 2]
    # power 3 sharpens: s'' = [0, .125, 1, .125, 0, 0] / 1.25 -> CDF [0, .1, .9, 1, 1, 1]
    # k = 5: u = [.2, .35, .5, .65, .8] -> all in candidate 2
    assert bolt_indices(s, 5, power=3.0).tolist() == [2, 2, 2, 2, 2]
    # the score scale and offset do not matter (min-max normalisation)
    assert bolt_indices(s * 7 - 3, 4, power=1.0).tolist() == [1, 2, 2, 2]


def test_bolt_matches_a_direct_numpy_reading_of_the_rule():
    import numpy as np

    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        m = int(torch.randint(8, 200, (1,), generator=g))
        k = int(torch.randint(2, m, (1,), generator=g))
        s = torch.rand(m, generator=g, dtype=torch.float64)
        x = (s.numpy() - s.numpy().min()) / (s.numpy().max() - s.numpy().min())
        p = x ** 3 / (x ** 3).sum()
        want = np.searchsorted(np.cumsum(p), np.linspace(1 / k, 1 - 1 / k, k))
        assert bolt_indices(s, k, 3.0).tolist() == np.minimum(want, m - 1).tolist()


def test_repeats_spread_to_the_nearest_free_candidate_earlier_first():
    assert spread_repeats(torch.tensor([1, 2, 2, 2]), 6).tolist() == [0, 1, 2, 3]
    assert spread_repeats(torch.tensor([2, 2, 2, 2, 2]), 6).tolist() == [0, 1, 2, 3, 4]
    assert spread_repeats(torch.tensor([5, 5, 5]), 6).tolist() == [3, 4, 5]


def test_select_is_deterministic_distinct_and_increasing():
    s = torch.rand(64, generator=torch.Generator().manual_seed(1))
    a, b = select_frames(s, 16), select_frames(s.clone(), 16)
    assert a.indices.tolist() == b.indices.tolist()
    idx = a.indices.tolist()
    assert len(set(idx)) == 16 and idx == sorted(idx) and 0 <= idx[0] and idx[-1] < 64


def test_a_peak_gets_frames_and_the_rest_of_the_video_still_gets_some():
    s = torch.full((100,), 0.1)
    s[40:44] = 1.0  # a brief relevant event
    s[::10] += 0.3  # moderate relevance spread over the video
    idx = select_frames(s, 16).indices.tolist()
    assert sum(40 <= i < 44 for i in idx) == 4  # every relevant frame (power 3: the peak holds most quantiles)
    idx = select_frames(s, 16, power=1.0).indices.tolist()
    assert sum(40 <= i < 44 for i in idx) == 4  # a softer power still takes the whole peak
    assert min(idx) < 25 and max(idx) > 75  # and covers the rest of the video


def test_flat_scores_give_uniform_frames_and_k_equal_m_gives_all():
    assert select_frames(torch.ones(10), 4).indices.tolist() == uniform_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert select_frames(torch.rand(7), 7).indices.tolist() == list(range(7))


def test_moments_merge_adjacent_high_candidates():
    times = [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5]
    s = torch.tensor([0.1, 0.1, 0.9, 1.0, 0.2, 0.1, 0.7, 0.1])
    moments = find_moments(s, times, duration=8.0)
    assert [(m.start, m.end, m.peak) for m in moments] == [(2.0, 4.0, 3.5), (6.0, 7.0, 6.5)]
    assert moments[0].score == 1.0 and abs(moments[1].score - 0.7) < 1e-6
    flat = find_moments(torch.zeros(3), [1.0, 2.0, 3.0], duration=4.0)
    assert [(m.start, m.end) for m in flat] == [(0.0, 4.0)]


def test_moments_take_the_median_as_floor_so_a_background_level_does_not_merge():
    # most candidates sit at a background 0.5, one empty frame at 0: min-max would put the background at the
    # level and merge it all; from the median only the peak (and its close neighbour) stand out
    times = [float(t) for t in range(8)]
    s = torch.tensor([0.0, 0.5, 0.55, 0.5, 1.0, 0.8, 0.5, 0.52])
    moments = find_moments(s, times, duration=8.0)
    assert [(m.start, m.end, m.peak) for m in moments] == [(3.5, 5.5, 4.0)]


def test_candidate_count_default_and_cap():
    from fastvid_cli.settings import SelectOptions

    assert SelectOptions(k=8).count(total=128, video_fps=8.0) == 32  # 4*K beats 16 s at one per second
    assert SelectOptions(k=8).count(total=60 * 30, video_fps=30.0) == 60  # a minute: one per second beats 4*K
    assert SelectOptions(k=8).count(total=3600 * 30, video_fps=30.0) == 256  # an hour: capped
    assert SelectOptions(k=100).count(total=10**6, video_fps=30.0) == 256  # 4*K over the cap: capped...
    assert SelectOptions(k=256).count(total=10**6, video_fps=30.0) == 256  # ...but never below K
    assert SelectOptions(k=8, candidates=100).count(total=50, video_fps=8.0) == 50  # never more than the video has
    assert SelectOptions(k=4)(total=10, video_fps=None) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]  # 16 > 10 frames: all
