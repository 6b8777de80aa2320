"""duet.training.text_models: the contract export, serving and drift rely on (fast tier, no CLI)."""

from __future__ import annotations

import pytest
import torch

from duet.data.text.spec import PAD_ID, TextSpec, fit_text_spec
from duet.errors import ConfigError
from duet.training.text_config import TEXT_MODELS
from duet.training.text_models import build_text_model

TEXTS = ["the cat sat on the mat", "a dog barked", "the dog and the cat", "birds sing at dawn"]


@pytest.fixture(scope="module")
def spec() -> TextSpec:
    return fit_text_spec(TEXTS, ngrams=2, max_tokens=None, sequence_length=12)


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_logits_and_pooled_features_have_the_contract_shapes(name: str, spec: TextSpec) -> None:
    torch.manual_seed(0)
    model = build_text_model(name, spec, 3).eval()
    ids = torch.randint(0, spec.vocab_size, (5, spec.sequence_length))
    assert model(ids).shape == (5, 3) and model(ids).dtype == torch.float32
    assert model.features(ids).shape == (5, 64) and model.features(ids).dtype == torch.float32


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_padding_changes_nothing(name: str, spec: TextSpec) -> None:
    """The same tokens followed by more padding give the same logits: padding is masked everywhere."""
    torch.manual_seed(0)
    model = build_text_model(name, spec, 3).eval()
    short = torch.tensor([[5, 2, 9, 1, PAD_ID, PAD_ID]])
    longer = torch.tensor([[5, 2, 9, 1] + [PAD_ID] * 8])
    with torch.no_grad():
        torch.testing.assert_close(model(short), model(longer), rtol=0, atol=1e-6)
        different = model(torch.tensor([[5, 2, 9, 3] + [PAD_ID] * 8]))
    assert not torch.allclose(different, model(longer))


def test_fasttext_pools_the_mean_embedding_of_the_tokens(spec: TextSpec) -> None:
    model = build_text_model("fasttext", spec, 2).eval()
    ids = torch.tensor([[4, 7, 7, PAD_ID], [PAD_ID] * 4])
    table = model.embedding.weight.detach()
    expected = (table[4] + 2 * table[7]) / 3
    features = model.features(ids).detach()
    torch.testing.assert_close(features[0], expected)
    assert torch.equal(features[1], torch.zeros(64))  # a document of padding only pools to zeros


def test_an_unknown_model_is_one_line(spec: TextSpec) -> None:
    with pytest.raises(ConfigError, match="unknown text model 'bert'; choose one of: fasttext, text_transformer"):
        build_text_model("bert", spec, 2)
