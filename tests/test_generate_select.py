"""CLIP balancing of research.pmg.generate.select: z, the choice, ties, non-positive cosines, a = 0 and a = 1."""
import math

import numpy as np
import pytest

from research.pmg.generate.select import COSINE_FLOOR, balance_score, cosine_similarity, select

# Hand-made CLIP embeddings: the preference text along x, the target text along y.
PREFERENCE, TARGET = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
IMAGES = np.array([[1.0, 1.0, 0.0],  # between both: d_p = d_t = 1/sqrt(2)
                   [1.0, 0.2, 0.0],  # personalized: d_p = 1/sqrt(1.04), d_t = 0.2/sqrt(1.04)
                   [0.2, 1.0, 0.0]])  # accurate: the mirror image
S = 1 / math.sqrt(1.04)


def scores(images=IMAGES):
    return cosine_similarity(images, PREFERENCE), cosine_similarity(images, TARGET)


def test_cosines_of_hand_made_embeddings():
    d_p, d_t = scores()
    np.testing.assert_allclose(d_p, [1 / math.sqrt(2), S, 0.2 * S], rtol=1e-12)
    np.testing.assert_allclose(d_t, [1 / math.sqrt(2), 0.2 * S, S], rtol=1e-12)
    # scale does not matter; a zero vector has cosine 0, not NaN
    np.testing.assert_allclose(cosine_similarity(IMAGES * 7.5, PREFERENCE * 0.1), d_p, rtol=1e-12)
    assert cosine_similarity(np.zeros((1, 3)), PREFERENCE).tolist() == [0.0]


def test_log_form_picks_the_balanced_image():
    selection = select(*scores(), a=0.5)
    np.testing.assert_allclose(selection.z, [math.log(1 / math.sqrt(2)), 0.5 * math.log(0.2 * S * S),
                                             0.5 * math.log(0.2 * S * S)], rtol=1e-12)
    np.testing.assert_allclose(selection.z, [-0.34657359, -0.82432931, -0.82432931], atol=1e-8)
    assert selection.chosen == 0 == int(np.argmax(selection.z))
    np.testing.assert_allclose(selection.personalization, scores()[0])
    np.testing.assert_allclose(selection.accuracy, scores()[1])


@pytest.mark.parametrize("a, expected", [(1.0, 1), (0.0, 2), (0.9, 1), (0.1, 2)])
def test_a_moves_the_choice_between_personalization_and_accuracy(a, expected):
    d_p, d_t = scores()
    selection = select(d_p, d_t, a=a)
    np.testing.assert_allclose(selection.z, a * np.log(d_p) + (1 - a) * np.log(d_t), rtol=1e-12)
    assert selection.chosen == expected


def test_a_zero_and_one_ignore_the_other_cosine_entirely():
    d_p = np.array([0.0, -0.7, 0.3])  # would be log(0) = -inf, and 0 * -inf = NaN, if it were used
    d_t = np.array([0.5, 0.6, 0.2])
    z = balance_score(d_p, d_t, a=0.0)
    np.testing.assert_allclose(z, np.log(d_t), rtol=1e-12)
    assert select(d_p, d_t, a=0.0).chosen == 1
    z = balance_score(d_t, d_p, a=1.0)  # roles swapped: only the first argument counts
    np.testing.assert_allclose(z, np.log(d_t), rtol=1e-12)
    assert balance_score(d_p, d_t, a=0.0, form="linear").tolist() == d_t.tolist()
    assert balance_score(d_p, d_t, a=1.0, form="linear").tolist() == d_p.tolist()


def test_non_positive_cosines_are_floored_not_nan():
    d_p = np.array([-0.3, 0.0, 0.4, COSINE_FLOOR / 2])
    d_t = np.array([0.5, 0.5, 0.5, 0.5])
    z = balance_score(d_p, d_t, a=0.5)
    assert np.all(np.isfinite(z))
    floor = 0.5 * math.log(COSINE_FLOOR) + 0.5 * math.log(0.5)
    np.testing.assert_allclose(z, [floor, floor, 0.5 * math.log(0.4) + 0.5 * math.log(0.5), floor], rtol=1e-12)
    assert z[0] == pytest.approx(-7.2543, abs=1e-4)
    assert select(d_p, d_t).chosen == 2  # the only image with a positive personalization


def test_all_negative_candidates_still_get_an_informed_choice():
    """Every z is the floor; the linear form breaks the tie (the least opposite image wins)."""
    d_p = np.array([-0.5, -0.1, -0.3])
    d_t = np.array([-0.2, -0.2, -0.2])
    selection = select(d_p, d_t, a=0.5)
    assert np.all(selection.z == math.log(COSINE_FLOOR))
    assert selection.chosen == 1


def test_ties_go_to_the_linear_form_then_to_the_first_candidate():
    # equal z from different cosines: log(0.4) + log(0.4) == log(0.2) + log(0.8); linear 0.4 < 0.5
    selection = select([0.4, 0.2], [0.4, 0.8], a=0.5)
    assert selection.z[0] == selection.z[1] and selection.chosen == 1
    # identical candidates: generation order decides
    assert select([0.3, 0.3, 0.3], [0.6, 0.6, 0.6]).chosen == 0
    assert select([0.1, 0.3, 0.3], [0.6, 0.6, 0.6]).chosen == 1
    assert select([0.3, 0.3], [0.6, 0.6], form="linear").chosen == 0


def test_linear_form():
    d_p, d_t = scores()
    selection = select(d_p, d_t, a=0.25, form="linear")
    np.testing.assert_allclose(selection.z, 0.25 * d_p + 0.75 * d_t, rtol=1e-12)
    assert selection.chosen == 2
    # the linear form keeps negative cosines as they are
    np.testing.assert_allclose(balance_score([-0.5], [0.5], a=0.5, form="linear"), [0.0])


def test_bad_input_raises():
    with pytest.raises(ValueError, match="not finite"):
        select([0.1, float("nan")], [0.2, 0.3])
    with pytest.raises(ValueError, match="same shape"):
        balance_score([0.1, 0.2], [0.3])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        balance_score([0.1], [0.2], a=1.5)
    with pytest.raises(ValueError, match="'log' or 'linear'"):
        balance_score([0.1], [0.2], form="product")
    with pytest.raises(ValueError, match="non-empty"):
        select([], [])
