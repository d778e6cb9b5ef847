"""The txt2img token counter counts as A1111's: the longest AND-subprompt of the prompt."""


def test_the_token_counter_counts_the_longest_subprompt_and_the_negative_whole(tmp_path):
    from ti.config import ModelConfig
    from ti.library import EmbeddingLibrary
    from ti.pipeline import load_model
    from ui.services import AppPaths, AppServices
    from ui.tab_txt2img import token_counter_text

    model = load_model(ModelConfig(model="demo", device="cpu"))
    services = AppServices(paths=AppPaths(embeddings_dir=tmp_path, models_dir=tmp_path / "m",
                                          cache_file=tmp_path / "h.json"),
                           model=model, model_config=ModelConfig(model="demo", device="cpu"),
                           library=EmbeddingLibrary(tmp_path, expected_width=model.text_width))
    one_part = token_counter_text(services, "a red tree")
    assert token_counter_text(services, "a red tree AND a b") == one_part  # the longer subprompt
    whole = token_counter_text(services, "a red tree AND a b", is_positive=False)
    assert int(whole.split("/")[0]) > int(one_part.split("/")[0])
