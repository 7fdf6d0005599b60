"""The demo trainer (fastvid_cli/demo/train.py) and its data side (train_data.py): targets read from the clip
description agree with the pixels and with the questions' answers, the question rows teach exactly the answer tokens
after the prompt the adapter builds, the shared-video LLM pass equals running every row whole; a run split over
calls goes on where it stopped (train_state.py), and token-dropping steps train both position layouts."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fastvid_cli import synth
from fastvid_cli.demo import train, train_data


def test_presence_and_patch_labels_agree_with_the_pixels():
    palette = train_data._palette()
    rgb = np.array(list(synth.COLOURS.values()))
    for seed in range(40):
        spec, _ = synth.generate(seed)
        pixels = synth.render(spec)
        presence, patch, cell = train_data.clip_targets(spec, 16, 8)
        assert np.array_equal(presence, train_data.colour_presence(pixels, palette)), seed
        # objects have distinct colours on a frame, so a patch's colour counts are its objects' pixel counts
        for grid, labels in ((16, patch[:, 1]), (8, cell[:, 1])):
            s = spec.height // grid
            same = (pixels[..., None, :].astype(int) == rgb).all(-1)  # (T, H, W, K)
            counts = same.reshape(spec.frames, grid, s, grid, s, len(rgb)).sum((2, 4))
            want = np.where(counts.max(-1) >= train_data.MIN_SHARE * s * s, counts.argmax(-1) + 1, 0)
            assert np.array_equal(labels, want), (seed, grid)
        assert ((patch[:, 0] > 0) == (patch[:, 1] > 0)).all() and (patch[:, 0] > 0).any()
        assert ((cell[:, 0] > 0)[:, None] == (cell > 0)).all()  # every target is set exactly on object cells
        assert cell[:, 2].max() < len(train_data.MOTIONS) and cell[:, 3].max() <= train_data.MAX_RANK


def test_background_labels_are_the_colour_most_pixels_have_on_each_frame():
    """frame_backgrounds names each frame's background, also after a scene cut (the after_cut question's answer)."""
    names, rgb = list(synth.BACKGROUNDS), np.array(list(synth.BACKGROUNDS.values()))
    cuts = 0
    for seed in range(40):
        spec, qas = synth.generate(seed)
        pixels = synth.render(spec).astype(int)
        counts = (pixels[..., None, :] == rgb).all(-1).sum((1, 2))  # (T, backgrounds): shapes cover < half a frame
        got = train_data.frame_backgrounds(spec)
        assert np.array_equal(got, counts.argmax(-1)), seed
        for qa in qas:
            if qa.type == "after_cut" and qa.subject.get("what") == "background":
                cuts += 1
                assert names[got[-1]] == qa.short_answer and names[got[0]] != qa.short_answer
    assert cuts >= 3


def _cells_of(spec, cell, qa_subject_colour: str, t: int) -> np.ndarray:
    """The cell-target vectors (n, 5) of frame t's cells covered by the object of that colour."""
    c = list(synth.COLOURS).index(qa_subject_colour) + 1
    return cell[t].transpose(1, 2, 0)[cell[t, 1] == c]


def test_motion_so_far_ends_at_the_direction_asked_about():
    for seed in range(3, 400, 8):  # primary type direction
        spec, qas = synth.generate(seed)
        qa = qas[0]
        obj = next(o for o in spec.objects if o.shape == qa.subject["shape"]
                   and o.states[o.visible()[0]].colour == qa.subject["colour"])
        _, _, cell = train_data.clip_targets(spec, 16, 8)
        first, last = obj.visible()[0], obj.visible()[-1]
        assert (_cells_of(spec, cell, qa.subject["colour"], first)[:, 2] == train_data.MOTIONS.index("static")).all()
        end = _cells_of(spec, cell, qa.subject["colour"], last)[:, 2]
        assert len(end) and (end == train_data.MOTIONS.index(qa.short_answer)).all(), seed


def test_rank_and_newest_answer_the_order_questions():
    for seed in list(range(4, 400, 8)) + list(range(5, 400, 8)):  # first_appears, last_appears primaries
        spec, qas = synth.generate(seed)
        qa = qas[0]
        states = train_data.object_states(spec)
        key = (lambda o: o.shape) if qa.subject["by"] == "shape" else (lambda o: o.states[o.visible()[0]].colour)
        i = next(i for i, o in enumerate(spec.objects) if key(o) == qa.short_answer)
        vis = spec.objects[i].visible()
        if qa.type == "first_appears":
            assert (states[i + 1, vis, 3] == 1).all() and (np.delete(states[:, :, 3], i + 1, 0) != 1).all()
        else:
            assert states[i + 1, vis, 3].max() == states[:, :, 3].max()
            assert (states[i + 1, vis, 4] == 2).all(), seed  # nothing appears after the last one
        # every target of a frame is decided by the frames up to it: an object appearing later changes none
        for j, o in enumerate(spec.objects):
            later = [p for p in spec.objects if p.visible()[0] > o.visible()[0]]
            if later:
                t = min(p.visible()[0] for p in later) - 1
                if o.states[t] is not None:
                    assert states[j + 1, t, 4] == 2


def test_order_questions_pass_the_benchmark_checker():
    made = 0
    for seed in range(300):
        spec, qas = synth.generate(seed)
        asked = {(q.type, tuple(sorted(q.subject.items()))) for q in qas}
        for qa in train_data.order_questions(random.Random(seed), spec, asked):
            made += 1
            assert synth.check(spec, qa) and (qa.type, tuple(sorted(qa.subject.items()))) not in asked
            order = sorted(spec.objects, key=lambda o: o.visible()[0], reverse=qa.type == "last_appears")
            want = order[0].shape if qa.subject["by"] == "shape" else order[0].states[order[0].visible()[0]].colour
            assert qa.short_answer == want
    assert made > 300  # about 1.5 a clip


def test_rows_label_the_answer_after_the_prompt():
    ids = train_data.PromptIds()
    spec, qas = synth.generate(5)
    suffix, n = ids.row(synth.short_prompt(qas[0]), qas[0].short_answer)
    batch = train_data.collate([(synth.render(spec), *train_data.clip_targets(spec, 16, 8), [(suffix, n, 0)],
                            train_data.frame_backgrounds(spec))], ids.pad)
    labels = batch["labels"][0]
    taught = labels[labels != -100].tolist()
    assert ids.tok.decode(taught[:-1]) == qas[0].short_answer and taught[-1] == ids.eos
    # the first answer token is predicted from the last prompt token (the generation prompt's newline)
    first = int(batch["first"][0].nonzero())
    assert suffix[first] == ids.row("x", "y")[0][-3] and labels[first] == taught[0]
    assert batch["cell"].shape == (1, 16, 5, 8, 8) and batch["patch"].shape == (1, 16, 2, 16, 16)


def test_shared_video_rows_equal_whole_rows_and_their_gradients():
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    lm = Qwen2Model(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=16)).eval()
    B, k, L, S, D = 2, 3, 12, 5, 32
    emb = torch.randn(B, L, D, requires_grad=True)
    pos = torch.cat([torch.arange(4), 4 + torch.tensor([0, 2, 3, 7, 8, 9, 12, 15])]).expand(B, -1)  # a drop
    suffix, spos = torch.randn(B * k, S, D), (30 + torch.arange(S)).expand(B * k, -1)
    mid, rows = train.shared_video_rows(lm, emb, pos, suffix, spos, k, 2)
    emb2 = emb.detach().clone().requires_grad_(True)
    whole = lm(inputs_embeds=torch.cat([emb2.repeat_interleave(k, 0), suffix], 1),
               position_ids=torch.cat([pos.repeat_interleave(k, 0), spos], 1), output_hidden_states=True)
    torch.testing.assert_close(rows, whole.last_hidden_state[:, L:])
    torch.testing.assert_close(mid, whole.hidden_states[2][::k, :L])
    w = torch.randn(rows.shape)
    g1 = torch.autograd.grad((rows * w).sum(), emb)[0]
    g2 = torch.autograd.grad((whole.last_hidden_state[:, L:] * w).sum(), emb2)[0]
    torch.testing.assert_close(g1, g2)


def _tiny_run(tmp_path, *extra):
    return train.parser().parse_args([
        "--out", str(tmp_path / "w"), "--max-steps", "4", "--batch", "2", "--questions", "2", "--frames", "8",
        "--workers", "0", "--vision-share", "0.5", "--warmup", "1", "--log-every", "1", "--device", "cpu", *extra])


def test_a_run_split_over_two_calls_goes_on_where_it_stopped(tmp_path):
    """A device call lasts at most 10 minutes: --state / --resume split one run over calls. The second call goes on
    with the first's optimizer (its step counts continue, they do not restart), phases, schedule and log, and ends
    the run where an unsplit one would."""
    first = train.fit(_tiny_run(tmp_path, "--call-steps", "2", "--state", str(tmp_path / "s1.pt")))
    assert (first.summary["steps"], first.summary["finished"]) == (2, False)
    assert first.summary["phase_steps"] == {"vision": 2, "joint": 0}
    s1 = torch.load(tmp_path / "s1.pt", weights_only=True)
    second = train.fit(_tiny_run(tmp_path, "--resume", str(tmp_path / "s1.pt"), "--state", str(tmp_path / "s2.pt")))
    assert (second.summary["steps"], second.summary["finished"]) == (4, True)
    assert second.summary["phase_steps"] == {"vision": 2, "joint": 2}
    assert [row["step"] for row in second.summary["log"]] == [1, 2, 3, 4]
    assert [row["phase"] for row in second.summary["log"]] == ["vision", "vision", "joint", "joint"]
    s2 = torch.load(tmp_path / "s2.pt", weights_only=True)
    tower = s2["opt"]["param_groups"][0]["params"][0]  # the tower's first parameter: trained in every step
    llm = s2["opt"]["param_groups"][1]["params"][-1]  # an LLM-side head: trained in the joint steps only
    assert int(s1["opt"]["state"][tower]["step"]) == 2
    assert int(s2["opt"]["state"][tower]["step"]) == 4
    assert int(s2["opt"]["state"][llm]["step"]) == 2
    name = next(n for n in s1["model"] if "vision_tower" in n and n.endswith("weight"))
    assert not torch.equal(s1["model"][name], s2["model"][name])  # the second call trained the tower further
    # a state's weights can be written without training on, to evaluate a run half-way
    half = train.fit(_tiny_run(tmp_path, "--resume", str(tmp_path / "s1.pt"), "--export"))
    assert half.summary["steps"] == 2
    assert torch.equal(half.model.state_dict()[name].half(), s1["model"][name])


def test_a_resumed_call_must_repeat_the_recipe(tmp_path):
    train.fit(_tiny_run(tmp_path, "--call-steps", "1", "--state", str(tmp_path / "s.pt")))
    args = _tiny_run(tmp_path, "--resume", str(tmp_path / "s.pt"))
    args.batch = 3
    with pytest.raises(ValueError, match=r"--batch 3 does not match the resumed run's 2"):
        train.fit(args)


def test_kept_tokens_keep_their_positions_or_are_renumbered_like_the_compact_methods():
    sel = torch.tensor([[0, 5, 9], [2, 3, 7]])
    slots, pos, text_at = train.kept_layout(sel, 12, compact=False)
    assert slots.tolist() == pos.tolist() == [[0, 5, 9, 11], [2, 3, 7, 11]] and text_at == 12
    slots, pos, text_at = train.kept_layout(sel, 12, compact=True)
    assert slots.tolist() == [[0, 5, 9, 11], [2, 3, 7, 11]]  # the features and targets still come from there
    assert pos.tolist() == [[0, 1, 2, 3]] * 2 and text_at == 4  # as Assembled.reindexed lays them out


def test_token_dropping_steps_train_with_either_layout(tmp_path):
    """The drop branch runs from the first joint step with every kept set renumbered (and with none): the step
    trains (finite losses) and the cell-position targets use each token's own place."""
    for share in ("1.0", "0.0"):
        run = train.fit(_tiny_run(tmp_path, "--drop-from", "0", "--drop-share", "1", "--compact-share", share))
        joint = [row for row in run.summary["log"] if row["phase"] == "joint"]
        assert joint and all(np.isfinite(row["qa_loss"]) and np.isfinite(row["cell_loss"]) for row in joint)
        assert run.summary["drop"]["compact"] == float(share)


def test_a_state_from_before_a_new_auxiliary_head_resumes_with_the_head_fresh(tmp_path):
    """A recipe may add an auxiliary head (the background-colour target came after the first half of a run had been
    trained): a state without it resumes, the head starting fresh; its optimizer entries line up again."""
    train.fit(_tiny_run(tmp_path, "--call-steps", "2", "--state", str(tmp_path / "s.pt")))
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    head_keys = [k for k in state["vision_aux"] if k.startswith("background.")]
    assert len(head_keys) == 2
    for key in head_keys:  # as a state written before the head existed: no weights, no optimizer entries
        del state["vision_aux"][key]
    groups = state["opt"]["param_groups"]
    gone = groups[0]["params"][-2:]  # the head's parameters are the last of the tower's group
    groups[0]["params"] = groups[0]["params"][:-2]
    for i in gone:
        state["opt"]["state"].pop(i, None)
    renumber = {old: old - 2 for old in groups[1]["params"]}
    groups[1]["params"] = [renumber[i] for i in groups[1]["params"]]
    state["opt"]["state"] = {renumber.get(i, i): v for i, v in state["opt"]["state"].items()}
    torch.save(state, tmp_path / "old.pt")
    run = train.fit(_tiny_run(tmp_path, "--resume", str(tmp_path / "old.pt"), "--state", str(tmp_path / "s2.pt")))
    assert run.summary["steps"] == 4 and run.summary["finished"]
    s2 = torch.load(tmp_path / "s2.pt", weights_only=True)
    tower = s2["opt"]["param_groups"][0]["params"][0]
    assert int(s2["opt"]["state"][tower]["step"]) == 4  # the old entries kept their place
    head = s2["opt"]["param_groups"][0]["params"][-1]
    assert int(s2["opt"]["state"][head]["step"]) == 2  # the new head trained in the resumed call only
    assert all(np.isfinite(row["patch_background_acc"]) for row in run.summary["log"][2:])


def test_resume_from_a_missing_or_foreign_file_is_a_one_line_error(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    for path, why in ((tmp_path / "nope.pt", "cannot read a training state there"),
                      (other, "not a training state written by --state")):
        with pytest.raises(ValueError, match=why) as e:
            train.fit(_tiny_run(tmp_path, "--resume", str(path)))
        assert "\n" not in str(e.value)
