import pytest


def _make(tmp_path_factory, name: str, **kw) -> str:
    """A saved tiny trained model folder (model + byte tokenizer), trained on one thread."""
    import torch

    from tests.helpers.tiny_llama import make_tiny_llama

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make_tiny_llama(str(tmp_path_factory.mktemp(name)), **kw)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A saved tiny trained LLaMA folder (model + byte tokenizer)."""
    return _make(tmp_path_factory, "tiny_llama")


@pytest.fixture(scope="session")
def tiny_llama_q4_dir(tmp_path_factory):
    """The tiny LLaMA with its layers' matrices as Q4_1 blocks (what a Q4_1 GGUF dequantizes to)."""
    return _make(tmp_path_factory, "tiny_llama_q4", q4=True)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory):
    """A tiny Qwen2-layout model (q/k/v biases), trained like the tiny LLaMA."""
    return _make(tmp_path_factory, "tiny_qwen2", qwen2=True)


@pytest.fixture(scope="session")
def tiny_llama_loaded(tiny_llama_dir):
    """(transformers model, tokenizer, LlamaWeights) of the tiny LLaMA."""
    from compiler.llm.weights import from_transformers, load_causal_lm

    model, tok = load_causal_lm(tiny_llama_dir)
    return model, tok, from_transformers(model)
