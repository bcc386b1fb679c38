import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests share a 2-core CI machine: keep torch from oversubscribing it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    if not torch.cuda.is_available():
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _quiet_machine():
    """Tests share a loaded machine: other processes' runnable threads would make every
    in-process profile warn about oversubscription. The tests of that warning set their own
    count (subprocesses, which read the real one, do not assert an empty stderr)."""
    from lrprof.measure import noise

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(noise, "other_runnable", lambda cpus, *args, **kwargs: 0.0)
        yield
