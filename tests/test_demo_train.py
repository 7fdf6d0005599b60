"""The demo trainer's data side (fastvid_cli/demo/train.py): targets read from the clip description agree with the
pixels, and the question rows teach exactly the answer tokens after the prompt the adapter builds."""

from __future__ import annotations

import numpy as np

from fastvid_cli import synth
from fastvid_cli.demo import train


def test_presence_from_the_description_equals_the_pixel_measure():
    palette = train._palette()
    for seed in range(40):
        spec, _ = synth.generate(seed)
        presence, patch, motion = train.clip_targets(spec, 16, 8)
        assert np.array_equal(presence, train.colour_presence(synth.render(spec), palette)), seed
        # a patch labelled with a colour shows that colour at its centre pixel (clip pixels 8i+3..8i+4)
        pixels = synth.render(spec)[:, 3::8, 3::8].astype(int)
        rgb = np.array(list(synth.COLOURS.values()))
        t, i, j = np.nonzero(patch[:, 1])
        near = np.abs(pixels[t, i, j] - rgb[patch[:, 1][t, i, j] - 1]).sum(-1) == 0
        assert near.mean() > 0.85, (seed, near.mean())  # edges: the label samples between pixels 3 and 4
        assert (patch[:, 0] > 0).sum() > 0 and ((patch[:, 0] > 0) == (patch[:, 1] > 0)).all()
        assert motion.max() < len(train.MOTIONS)


def test_motion_target_is_the_direction_asked_about():
    for seed in range(3, 200, 8):  # primary type direction
        spec, qas = synth.generate(seed)
        obj = next(o for o in spec.objects if o.shape == qas[0].subject["shape"]
                   and o.states[o.visible()[0]].colour == qas[0].subject["colour"])
        assert train._motion(obj) == qas[0].short_answer


def test_rows_label_the_answer_after_the_prompt():
    ids = train.PromptIds()
    spec, qas = synth.generate(5)
    suffix, n = ids.row(synth.short_prompt(qas[0]), qas[0].short_answer)
    batch = train.collate([(synth.render(spec), *train.clip_targets(spec, 16, 8), [(suffix, n, 0)])], ids.pad)
    labels = batch["labels"][0]
    taught = labels[labels != -100].tolist()
    assert ids.tok.decode(taught[:-1]) == qas[0].short_answer and taught[-1] == ids.eos
    # the first answer token is predicted from the last prompt token (the generation prompt's newline)
    first = int(batch["first"][0].nonzero())
    assert suffix[first] == ids.row("x", "y")[0][-3] and labels[first] == taught[0]
