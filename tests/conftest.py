import pytest
import torch


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from prefero.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama + tokenizer saved in HF format (read-only for tests)."""
    from prefero.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    from prefero.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test gets its own reference-log-prob cache (subprocesses inherit it)."""
    monkeypatch.setenv("PREFERO_CACHE", str(tmp_path / "prefero-cache"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (a module opts in with `pytestmark`): tiny models gain
    nothing from more, spinning threads slow them on a shared 2-core machine, and the tests
    that compare against launched processes (OMP_NUM_THREADS=1) compute as they do."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
