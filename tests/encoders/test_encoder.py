"""The encoder: both model folder layouts, vector shape/dtype/norm, identity, batching,
and one-line errors for every kind of bad model input."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from clipsearch.encoders import Encoder
from clipsearch.errors import ClipsearchError
from clipsearch.images import load_image

TEXTS = ["a red circle", "a blue square on white", "x", "purple triangle, large and centred"]


@pytest.fixture(scope="module")
def st_encoder(tiny_st_model_dir):
    return Encoder(str(tiny_st_model_dir), device="cpu")


@pytest.fixture(scope="module")
def other_encoder(other_model_dir):
    return Encoder(str(other_model_dir), device="cpu")


@pytest.fixture
def pil_images(images, encoder):
    return [load_image(str(p), target=encoder.image_size).image for p in images]


def _assert_unit_float32(vectors: np.ndarray, n: int, dim: int) -> None:
    assert isinstance(vectors, np.ndarray)
    assert vectors.dtype == np.float32
    assert vectors.shape == (n, dim)
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert message.strip(), "error message is empty"
    assert "\n" not in message.strip(), f"error message is not one line: {message!r}"
    return message


# -- loading and layouts ---------------------------------------------------------------


def test_tiny_model_facts(encoder):
    assert encoder.dim == 16  # TINY projection_dim
    assert encoder.image_size == 32
    assert encoder.device == "cpu"


def test_both_layouts_give_same_image_vectors(encoder, st_encoder, pil_images):
    a = encoder.encode_images(pil_images)
    b = st_encoder.encode_images(pil_images)
    _assert_unit_float32(a, len(pil_images), encoder.dim)
    _assert_unit_float32(b, len(pil_images), st_encoder.dim)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_both_layouts_give_same_text_vectors(encoder, st_encoder):
    a = encoder.encode_texts(TEXTS)
    b = st_encoder.encode_texts(TEXTS)
    _assert_unit_float32(a, len(TEXTS), encoder.dim)
    _assert_unit_float32(b, len(TEXTS), st_encoder.dim)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_image_and_text_vectors_share_one_space(encoder, pil_images):
    images = encoder.encode_images(pil_images[:3])
    texts = encoder.encode_texts(TEXTS[:2])
    assert images.shape[1] == texts.shape[1] == encoder.dim
    scores = texts @ images.T
    assert scores.shape == (2, 3)
    assert np.all(np.abs(scores) <= 1.0 + 1e-5)


def test_different_texts_give_different_vectors(encoder):
    """Without start/end tokens the text tower pools the same position for every text."""
    vectors = encoder.encode_texts(["a red circle", "a blue square", "dog"])
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            assert np.abs(vectors[i] - vectors[j]).max() > 1e-3, (i, j)
            assert float(vectors[i] @ vectors[j]) < 0.9999


def test_tokenizer_wraps_text_in_start_and_end_tokens(encoder):
    tokenizer = encoder.st[0].processor.tokenizer
    ids = tokenizer("ab")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.eos_token_id
    assert len(ids) == 4  # start, a, b</w>, end
    assert encoder.clip.config.text_config.eos_token_id == tokenizer.eos_token_id


def test_different_images_give_different_vectors(encoder, pil_images):
    vectors = encoder.encode_images(pil_images[:4])
    assert len({tuple(np.round(v, 4)) for v in vectors}) == 4


# -- identity --------------------------------------------------------------------------


def test_identity_same_across_layouts(encoder, st_encoder):
    a, b = encoder.identity, st_encoder.identity
    assert a.image_fingerprint == b.image_fingerprint
    assert a.text_fingerprint == b.text_fingerprint
    assert a.dim == b.dim == encoder.dim
    assert a.is_compatible_with(b) and b.is_compatible_with(a)
    assert len(a.image_fingerprint) == 64  # sha256 hex


def test_identity_name_is_absolute_folder(encoder, tiny_model_dir):
    assert encoder.identity.name == str(Path(tiny_model_dir).resolve())


def test_identity_differs_for_other_weights(encoder, other_encoder):
    assert other_encoder.identity.image_fingerprint != encoder.identity.image_fingerprint
    assert other_encoder.identity.text_fingerprint != encoder.identity.text_fingerprint
    assert not other_encoder.identity.is_compatible_with(encoder.identity)
    with pytest.raises(ClipsearchError, match="model mismatch") as excinfo:
        other_encoder.identity.check_against(encoder.identity, "photos")
    _one_line_error(excinfo)


def test_a_model_folder_trained_again_in_place_says_so_and_how_to_bring_the_index_over(encoder, other_encoder):
    """One folder, other weights (finetune --overwrite into the collection's own model):
    'built with X, but the model in use is X' named the same folder twice."""
    from dataclasses import replace

    same_place = replace(other_encoder.identity, name=encoder.identity.name)
    with pytest.raises(ClipsearchError, match="model mismatch") as excinfo:
        same_place.check_against(encoder.identity, "photos")
    _one_line_error(excinfo)
    message = str(excinfo.value)
    assert f"the model in {encoder.identity.name} changed since collection 'photos' was built" in message
    assert f"clipsearch reindex --model {encoder.identity.name}" in message


def test_identity_is_stable_across_loads(encoder, tiny_model_dir):
    again = Encoder(str(tiny_model_dir), device="cpu")
    assert again.identity == encoder.identity


def test_other_model_gives_different_vectors(encoder, other_encoder, pil_images):
    a = encoder.encode_images(pil_images[:3])
    b = other_encoder.encode_images(pil_images[:3])
    assert np.abs(a - b).max() > 1e-3


# -- batching and empty input -----------------------------------------------------------


def test_batch_image_encoding_equals_one_by_one(encoder, pil_images):
    batched = encoder.encode_images(pil_images, batch_size=5)
    singles = np.concatenate([encoder.encode_images([img]) for img in pil_images])
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_batch_text_encoding_equals_one_by_one(encoder):
    """Texts of different lengths are padded in a batch; padding must not change them."""
    batched = encoder.encode_texts(TEXTS, batch_size=3)
    singles = np.concatenate([encoder.encode_texts([t]) for t in TEXTS])
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_empty_lists(encoder):
    images = encoder.encode_images([])
    texts = encoder.encode_texts([])
    for v in (images, texts):
        assert v.shape == (0, encoder.dim)
        assert v.dtype == np.float32


# -- bad model input --------------------------------------------------------------------


def test_missing_folder(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ClipsearchError) as excinfo:
        Encoder(str(missing), device="cpu")
    message = _one_line_error(excinfo)
    assert str(missing) in message
    assert "does not exist" in message


def test_folder_without_model_files(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    with pytest.raises(ClipsearchError) as excinfo:
        Encoder(str(folder), device="cpu")
    message = _one_line_error(excinfo)
    assert str(folder) in message
    assert "modules.json" in message and "config.json" in message


def test_file_instead_of_folder(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ClipsearchError) as excinfo:
        Encoder(str(path), device="cpu")
    assert str(path) in _one_line_error(excinfo)


def test_non_clip_transformers_model(tmp_path):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertModel(config).save_pretrained(folder)
    with pytest.raises(ClipsearchError) as excinfo:
        Encoder(str(folder), device="cpu")
    message = _one_line_error(excinfo)
    assert str(folder) in message
    assert "not a CLIP model" in message or "cannot load" in message


def test_broken_config_json(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{ this is not json")
    with pytest.raises(ClipsearchError) as excinfo:
        Encoder(str(folder), device="cpu")
    assert str(folder) in _one_line_error(excinfo)


def _assert_points_at_local_folder(message: str) -> None:
    assert "CLIPSEARCH_MODEL" in message
    assert "local" in message and "folder" in message


def test_hub_id_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty hub cache
    started = time.monotonic()
    with pytest.raises(ClipsearchError) as excinfo:
        Encoder("sentence-transformers/clip-ViT-B-32", device="cpu")
    elapsed = time.monotonic() - started
    message = _one_line_error(excinfo)
    assert "sentence-transformers/clip-ViT-B-32" in message
    _assert_points_at_local_folder(message)
    assert elapsed < 15, f"took {elapsed:.1f} s to fail"


def test_hub_id_without_network_fails_fast(monkeypatch, tmp_path):
    """No HF_HUB_OFFLINE, but the hub cannot be reached: still one fast line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    started = time.monotonic()
    with pytest.raises(ClipsearchError) as excinfo:
        Encoder("openai/clip-vit-base-patch32", device="cpu")
    elapsed = time.monotonic() - started
    message = _one_line_error(excinfo)
    assert "openai/clip-vit-base-patch32" in message
    _assert_points_at_local_folder(message)
    assert elapsed < 15, f"took {elapsed:.1f} s to fail"


def test_cuda_device_without_cuda(tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ClipsearchError) as excinfo:
        Encoder(str(tiny_model_dir), device="cuda")
    assert "CUDA" in _one_line_error(excinfo)


def test_a_query_longer_than_the_text_tower_is_truncated_not_fatal(encoder):
    long_text = "a photo of a red circle on a white background " * 40  # far over 77 tokens
    vectors = encoder.encode_texts([long_text, long_text[:200]])
    assert vectors.shape == (2, encoder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
